#!/usr/bin/env python3
"""A Baton client in Python over grpcio, against the example shop services.

It generates the gRPC stubs from ../../proto (grpcio-tools, into ./gen unless --gen-dir says
otherwise), then walks through the API:

  1. registers the example services (RegistryService.Register), unless they registered
     themselves (started with --baton), and lists what the registry holds;
  2. asks the planner for a plan from an order to a tracking number (PlannerService.Plan);
  3. applies examples/workflows/order.yaml (WorkflowService.ApplyDefinition);
  4. starts a few executions (ExecutionService.StartExecution, with idempotency keys);
  5. watches one to completion (ExecutionService.WatchExecution, a server stream);
  6. pauses and resumes one (PauseExecution, ResumeExecution);
  7. reads every execution's state and output (GetExecution).

Run the services and Baton first, e.g.:

  cargo run -p baton-examples --bin baton-example-service -- inventory --listen 127.0.0.1:8081 &
  cargo run -p baton-examples --bin baton-example-service -- payments --listen 127.0.0.1:8082 &
  cargo run -p baton-examples --bin baton-example-service -- shipping --listen 127.0.0.1:8083 &
  baton serve &
  python3 -m venv .venv && .venv/bin/pip install -r examples/python/requirements.txt
  .venv/bin/python examples/python/client.py demo \\
      --service inventory=http://127.0.0.1:8081 --service payments=http://127.0.0.1:8082 \\
      --service shipping=http://127.0.0.1:8083

`client.py churn` starts executions from many threads on one channel, watches each and cancels
the watch (`call.cancel()`) as soon as its terminal event arrives, as a client that has what it
needs does, and fails on any error: a long-lived client keeps its connection.

`client.py gen` only generates the stubs. `client.py reflect` lists the server's services and
the methods of each `baton.v1` service by server reflection (grpcio-reflection, which speaks
the v1alpha protocol), without any stubs.
"""

from __future__ import annotations

import argparse
import json
import itertools
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROTO_DIR = ROOT / "proto"
WORKFLOW = ROOT / "examples" / "workflows" / "order.yaml"

# What each example service registers (see examples/services/src/lib.rs): its POST path,
# capabilities, and the concepts it consumes and produces.
KINDS = {
    "inventory": ("/reserve", ["inventory", "inventory.reserve"], ["order"], ["reservation"]),
    "payments": ("/charge", ["payment", "payment.charge"], ["order"], ["receipt"]),
    "shipping": ("/ship", ["shipping", "shipping.ship"], ["reservation", "receipt"], ["tracking"]),
}


def generate(out: Path) -> None:
    """Generates the Python modules of proto/baton/v1 into `out` (baton/v1/*_pb2*.py)."""
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "baton" / "v1").glob("*.proto"))
    if not protos:
        sys.exit(f"no .proto files under {PROTO_DIR}")
    # `python -m grpc_tools.protoc` adds the include path of the well-known types itself.
    command = [
        sys.executable, "-m", "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        *protos,
    ]
    subprocess.run(command, check=True)


def load(out: Path):
    """Generates the stubs when missing or older than the protos, and imports them."""
    newest_proto = max(p.stat().st_mtime for p in (PROTO_DIR / "baton" / "v1").glob("*.proto"))
    marker = out / "baton" / "v1" / "registry_pb2_grpc.py"
    if not marker.exists() or marker.stat().st_mtime < newest_proto:
        generate(out)
    sys.path.insert(0, str(out))
    # The generated modules import each other as `baton.v1.*`: `out` must be on the path first.
    import grpc  # noqa: PLC0415
    from baton.v1 import (  # noqa: PLC0415
        common_pb2,
        execution_pb2,
        execution_pb2_grpc,
        planner_pb2,
        planner_pb2_grpc,
        registry_pb2,
        registry_pb2_grpc,
        workflow_pb2,
        workflow_pb2_grpc,
    )

    return argparse.Namespace(
        grpc=grpc,
        common=common_pb2,
        execution=execution_pb2,
        execution_grpc=execution_pb2_grpc,
        planner=planner_pb2,
        planner_grpc=planner_pb2_grpc,
        registry=registry_pb2,
        registry_grpc=registry_pb2_grpc,
        workflow=workflow_pb2,
        workflow_grpc=workflow_pb2_grpc,
    )


def service_spec(pb, kind: str, service_id: str, base_url: str):
    """The spec of an example service at `base_url`, health-checked by GET /health."""
    path, capabilities, inputs, outputs = KINDS[kind]
    base_url = base_url.rstrip("/")
    spec = pb.registry.ServiceSpec(
        id=service_id,
        name=f"example {kind} service",
        version="python-demo",
        endpoint=pb.registry.Endpoint(http=pb.registry.Endpoint.Http(url=base_url + path)),
        capabilities=capabilities,
        inputs=inputs,
        outputs=outputs,
        formats=["json"],
        qos=pb.registry.Qos(latency_p50_ms=2.0, latency_p99_ms=10.0, throughput_rps=1000.0, cost=0.01),
        security=pb.common.SecurityProfile(
            auth_schemes=[pb.common.AUTH_SCHEME_NONE], encryption=pb.common.ENCRYPTION_NONE
        ),
        capacity=64,
        health_check=pb.registry.HealthCheck(
            http=pb.registry.HealthCheck.Http(url=base_url + "/health"),
        ),
        labels={"example": "shop", "kind": kind},
    )
    spec.health_check.interval.FromSeconds(2)
    spec.health_check.timeout.FromSeconds(1)
    return spec


def state_name(pb, state: int) -> str:
    return pb.execution.ExecutionState.Name(state).removeprefix("EXECUTION_STATE_")


def describe(pb, event) -> str:
    """One line per journal event."""
    kind = event.WhichOneof("kind")
    detail = getattr(event, kind)
    if kind == "task_scheduled":
        text = f"{detail.step} attempt {detail.attempt} -> {detail.service}"
    elif kind == "task_succeeded":
        text = f"{detail.step} attempt {detail.attempt}: {detail.output_json}"
    elif kind == "task_failed":
        again = "retryable" if detail.retryable else "permanent"
        text = f"{detail.step} attempt {detail.attempt} failed ({again}): {detail.error}"
    elif kind == "task_skipped":
        text = f"{detail.step}: {detail.reason}"
    elif kind == "started":
        text = detail.input_json
    elif kind == "completed":
        text = detail.output_json
    elif kind == "failed":
        text = detail.error
    elif kind == "cancelled":
        text = detail.reason
    else:
        text = ""
    return f"  #{event.sequence:<3} {kind:<15} {text}"


def demo(args, pb) -> None:
    grpc = pb.grpc
    channel = grpc.insecure_channel(args.baton)
    grpc.channel_ready_future(channel).result(timeout=args.timeout)
    registry = pb.registry_grpc.RegistryServiceStub(channel)
    planner = pb.planner_grpc.PlannerServiceStub(channel)
    workflows = pb.workflow_grpc.WorkflowServiceStub(channel)
    executions = pb.execution_grpc.ExecutionServiceStub(channel)

    print("1. services")
    for item in args.service:
        kind_and_id, _, url = item.partition("=")
        kind, _, service_id = kind_and_id.partition(":")
        if kind not in KINDS or not url:
            sys.exit(f"--service {item!r}: expected KIND[:ID]=URL with KIND one of {', '.join(KINDS)}")
        response = registry.Register(pb.registry.RegisterRequest(spec=service_spec(pb, kind, service_id or kind, url)))
        outcome = pb.registry.RegisterOutcome.Name(response.outcome).removeprefix("REGISTER_OUTCOME_")
        print(f"   registered {service_id or kind} at {url}: {outcome.lower()}")
    # A service with an HTTP health check is UNKNOWN until its first probe passes.
    deadline = time.monotonic() + args.timeout
    while True:
        listed = registry.ListServices(pb.registry.ListServicesRequest(page_size=100))
        waiting = [v for v in listed.services if v.status.health == pb.registry.HEALTH_UNKNOWN]
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for view in listed.services:
        health = pb.registry.Health.Name(view.status.health).removeprefix("HEALTH_")
        print(f"   {view.spec.id:<14} {health.lower():<9} {', '.join(view.spec.capabilities)}")

    print("2. plan: from an order to a tracking number")
    goal = pb.planner.Goal(provided=["order"], wanted=["tracking"], objective=pb.planner.OBJECTIVE_LATENCY)
    try:
        plan = planner.Plan(pb.planner.PlanRequest(goal=goal)).plan
        for number, level in enumerate(plan.levels, start=1):
            services = [next(t.service for t in plan.tasks if t.id == task) for task in level.tasks]
            print(f"   level {number}: {', '.join(services)}")
        print(f"   predicted latency {plan.predicted.latency_ms:.1f} ms, cost {plan.predicted.cost:.3f}")
    except grpc.RpcError as error:
        print(f"   no plan: {error.code().name}: {error.details()}")

    print(f"3. apply {WORKFLOW.relative_to(ROOT)}")
    applied = workflows.ApplyDefinition(pb.workflow.ApplyDefinitionRequest(source=WORKFLOW.read_text()))
    definition = applied.definition
    outcome = pb.workflow.ApplyOutcome.Name(applied.outcome).removeprefix("APPLY_OUTCOME_").lower()
    print(f"   {definition.name} v{definition.version} ({definition.step_count} steps): {outcome}")

    print(f"4. start {args.runs} executions")
    started = []
    run = uuid.uuid4().hex[:8]
    for n in range(args.runs):
        order = {"sku": f"book-{n}", "quantity": 1 + n % 3, "amount": 10.0 + n}
        request = pb.execution.StartExecutionRequest(
            workflow=definition.name, input_json=json.dumps(order), idempotency_key=f"python-demo-{run}-{n}"
        )
        execution = executions.StartExecution(request).execution
        started.append(execution.id)
        print(f"   {execution.id} {state_name(pb, execution.state).lower()} {order}")

    problems = []
    print(f"5. watch {started[0]} to its end")
    last = None
    for response in executions.WatchExecution(pb.execution.WatchExecutionRequest(id=started[0]), timeout=args.timeout):
        print(describe(pb, response.event))
        last = response.event
    if last is None or last.WhichOneof("kind") not in ("completed", "failed", "cancelled"):
        problems.append(f"the watch of {started[0]} ended without a terminal event")

    print("6. pause and resume one")
    order = {"sku": "pause-me", "quantity": 1, "amount": 5.0}
    request = pb.execution.StartExecutionRequest(
        workflow=definition.name, input_json=json.dumps(order), idempotency_key=f"python-demo-{run}-pause"
    )
    paused_id = executions.StartExecution(request).execution.id
    started.append(paused_id)
    try:
        paused = executions.PauseExecution(pb.execution.PauseExecutionRequest(id=paused_id)).execution
        print(f"   {paused_id} {state_name(pb, paused.state).lower()}")
        time.sleep(0.5)
        still = executions.GetExecution(pb.execution.GetExecutionRequest(id=paused_id)).execution
        print(f"   after 0.5s: {state_name(pb, still.state).lower()}")
        resumed = executions.ResumeExecution(pb.execution.ResumeExecutionRequest(id=paused_id)).execution
        print(f"   resumed: {state_name(pb, resumed.state).lower()}")
        if (state_name(pb, paused.state), state_name(pb, still.state)) != ("PAUSED", "PAUSED"):
            problems.append(f"{paused_id} did not stay paused")
        if state_name(pb, resumed.state) not in ("RUNNING", "COMPLETED"):
            problems.append(f"{paused_id} did not resume")
    except grpc.RpcError as error:
        # It may have finished before the pause arrived: services on loopback are quick.
        print(f"   {error.code().name}: {error.details()}")
        if args.check:
            problems.append(f"pause/resume of {paused_id}: {error.code().name}: {error.details()}")

    print("7. outputs")
    deadline = time.monotonic() + args.timeout
    ended = {"COMPLETED", "FAILED", "CANCELLED"}
    for execution_id in started:
        while True:
            execution = executions.GetExecution(pb.execution.GetExecutionRequest(id=execution_id)).execution
            state = state_name(pb, execution.state)
            if state in ended or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        result = execution.output_json if execution.HasField("output_json") else execution.error
        print(f"   {execution_id} {state.lower()}: {result}")
        if state != "COMPLETED":
            problems.append(f"{execution_id} ended {state.lower()}: {result}")
        elif not isinstance(json.loads(execution.output_json), dict) or not json.loads(execution.output_json):
            problems.append(f"{execution_id} completed without an output")
        for task in execution.tasks:
            task_state = pb.execution.TaskState.Name(task.state).removeprefix("TASK_STATE_").lower()
            print(f"      {task.step:<8} {task_state:<9} attempts {task.attempts} via {task.service}")
    if problems:
        print("problems:")
        for problem in problems:
            print(f"   {problem}")
        if args.check:
            sys.exit(1)


def churn(args, pb) -> None:
    """Runs `--executions` executions of `--workflow`, `--callers` at a time on one channel; each
    watch is cancelled at its terminal event. Exits 1 on any error."""
    grpc = pb.grpc
    channel = grpc.insecure_channel(args.baton)
    grpc.channel_ready_future(channel).result(timeout=args.timeout)
    executions = pb.execution_grpc.ExecutionServiceStub(channel)
    numbers = itertools.count()
    lock = threading.Lock()
    errors = []

    def one(n: int) -> None:
        request = pb.execution.StartExecutionRequest(workflow=args.workflow, input_json=json.dumps({"n": n}))
        execution = executions.StartExecution(request, timeout=args.timeout).execution
        call = executions.WatchExecution(pb.execution.WatchExecutionRequest(id=execution.id), timeout=args.timeout)
        for response in call:
            kind = response.event.WhichOneof("kind")
            if kind in ("completed", "failed", "cancelled"):
                # Done with this stream: let it go without reading it to its end.
                call.cancel()
                if kind != "completed":
                    raise RuntimeError(f"{execution.id} ended {kind}")
                return
        raise RuntimeError(f"the watch of {execution.id} ended before its terminal event")

    def caller() -> None:
        while (n := next(numbers)) < args.executions:
            try:
                one(n)
            except Exception as error:  # noqa: BLE001 - every failure is counted and reported
                with lock:
                    errors.append(f"execution {n}: {error}")

    began = time.monotonic()
    threads = [threading.Thread(target=caller) for _ in range(args.callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    print(
        f"{args.executions} executions by {args.callers} callers on one channel in {elapsed:.1f}s "
        f"({args.executions / elapsed:.0f}/s): {len(errors)} errors"
    )
    for error in errors[:5]:
        print(f"   {error}")
    if errors:
        sys.exit(1)


def reflect(args) -> None:
    """Lists the services by reflection, with each baton.v1 service's methods."""
    import grpc
    from google.protobuf.descriptor_pool import DescriptorPool
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

    channel = grpc.insecure_channel(args.baton)
    grpc.channel_ready_future(channel).result(timeout=args.timeout)
    database = ProtoReflectionDescriptorDatabase(channel)
    pool = DescriptorPool(database)
    for name in sorted(database.get_services()):
        if name.startswith("baton.v1."):
            methods = ", ".join(m.name for m in pool.FindServiceByName(name).methods)
            print(f"{name}: {methods}")
        else:
            print(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gen-dir", type=Path, default=HERE / "gen", help="where the stubs go (default: ./gen)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("gen", help="generate the stubs and stop")
    run = commands.add_parser("demo", help="walk through the API")
    run.add_argument("--baton", default="127.0.0.1:50051", help="Baton's gRPC address (default: %(default)s)")
    run.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="KIND[:ID]=URL",
        help="register an example service running at URL (repeat; omit when they self-register)",
    )
    run.add_argument("--runs", type=int, default=3, help="executions to start (default: %(default)s)")
    run.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for anything (default: %(default)s)")
    run.add_argument(
        "--check", action="store_true", help="exit 1 unless every run completed with an output and pause held"
    )
    churning = commands.add_parser("churn", help="many executions on one channel, each watch cancelled at its end")
    churning.add_argument("--baton", default="127.0.0.1:50051", help="Baton's gRPC address (default: %(default)s)")
    churning.add_argument("--workflow", required=True, help="the workflow to run (applied already)")
    churning.add_argument("--executions", type=int, default=1000, help="executions in all (default: %(default)s)")
    churning.add_argument("--callers", type=int, default=64, help="threads calling at once (default: %(default)s)")
    churning.add_argument("--timeout", type=float, default=30.0, help="seconds any one call may take (default: %(default)s)")
    listing = commands.add_parser("reflect", help="list the server's services by reflection")
    listing.add_argument("--baton", default="127.0.0.1:50051", help="Baton's gRPC address (default: %(default)s)")
    listing.add_argument("--timeout", type=float, default=30.0, help="seconds to wait to connect (default: %(default)s)")
    args = parser.parse_args()
    if args.command == "reflect":
        reflect(args)
        return
    if args.command == "gen":
        generate(args.gen_dir)
        print(f"stubs in {args.gen_dir}")
        return
    if args.command == "churn":
        churn(args, load(args.gen_dir))
        return
    demo(args, load(args.gen_dir))


if __name__ == "__main__":
    main()
