//! Fuzzes `snapflow::fuzzing::log_frames` (see that module for the properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snapflow::fuzzing::log_frames(data));
