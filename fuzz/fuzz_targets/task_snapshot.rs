//! Fuzzes `snapflow::fuzzing::task_snapshot` (see that module for the properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snapflow::fuzzing::task_snapshot(data));
