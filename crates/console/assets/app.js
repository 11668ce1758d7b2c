// Baton console: live execution pages, JSON checks before sending, confirmation before
// cancelling. Served from the binary; the page allows no inline script.
"use strict";

// Execution pages: the server sends an event per journal entry; on each, fetch the page's
// live parts again and swap the regions that changed. The stream's "end" follows the event
// that ends the execution.
function followExecution(root) {
  const events = root.dataset.events;
  if (!events) return;
  let pending = null;
  let source = null;
  const refresh = async () => {
    pending = null;
    const answer = await fetch(root.dataset.live, { credentials: "same-origin", cache: "no-store" });
    if (!answer.ok) return;
    const fresh = document.createElement("template");
    fresh.innerHTML = await answer.text();
    for (const region of fresh.content.querySelectorAll("[data-region]")) {
      const current = root.querySelector(`[data-region="${region.dataset.region}"]`);
      if (!current || current.innerHTML === region.innerHTML) continue;
      // Never pull a form from under someone typing in it.
      if (current.contains(document.activeElement) && document.activeElement.matches("input, textarea")) continue;
      current.replaceWith(region);
    }
    document.dispatchEvent(new CustomEvent("baton:updated"));
  };
  const schedule = () => {
    if (pending === null) pending = setTimeout(refresh, 150);
  };
  source = new EventSource(events);
  source.addEventListener("journal", schedule);
  source.addEventListener("end", () => {
    source.close();
    schedule();
    root.dataset.ended = "true";
  });
  source.addEventListener("failure", () => source.close());
}

// Forms with data-json fields: refuse to send text that is not JSON, and say why.
function checkJson(form) {
  form.addEventListener("submit", (event) => {
    for (const field of form.querySelectorAll("[data-json]")) {
      const message = document.getElementById(field.getAttribute("aria-describedby"));
      try {
        JSON.parse(field.value.trim() === "" ? "{}" : field.value);
        field.setCustomValidity("");
        field.removeAttribute("aria-invalid");
        if (message) message.textContent = "";
      } catch (error) {
        const text = `Not valid JSON: ${error.message}`;
        field.setCustomValidity(text);
        field.setAttribute("aria-invalid", "true");
        if (message) message.textContent = text;
        event.preventDefault();
        field.focus();
        return;
      }
    }
  });
  for (const field of form.querySelectorAll("[data-json]")) {
    field.addEventListener("input", () => field.setCustomValidity(""));
  }
}

// Forms that destroy work ask first.
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
    event.preventDefault();
  }
});

document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-live]");
  if (live) followExecution(live);
  for (const form of document.querySelectorAll("form[data-json-form]")) checkJson(form);
});
