//! Fuzzes `snapflow::fuzzing::envelope` (see that module for the properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| snapflow::fuzzing::envelope(data));
