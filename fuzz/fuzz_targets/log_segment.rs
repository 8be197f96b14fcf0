//! Fuzzes `snapflow::fuzzing::log_segment`: the input is a segment file and an index file,
//! split at a position given by its first two bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let (segment, index) = rest.split_at(split.min(rest.len()));
    snapflow::fuzzing::log_segment(segment, index);
});
