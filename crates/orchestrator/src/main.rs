//! The `baton` binary: the server and the CLI.

fn main() {}
