//! The conformance suite against the in-memory store.

baton_store::conformance_tests!(baton_store::testing::MemoryHarness::default());
