//! Fuzz the mesh link frame decoder (`mesh::wire`): the bytes a peer sends
//! before and after its hello.
//!
//! Properties, for any byte stream:
//! - `decode` / `decode_eof` return (never panic);
//! - no call makes the buffer reserve more than one whole frame
//!   (`LEN_PREFIX + MAX_FRAME_LEN`), whatever length a prefix announces;
//! - `Ok(None)` consumes nothing;
//! - the frames and the final error (if any) do not depend on how the stream
//!   was cut into reads: byte by byte, in reads of a few sizes, and in one
//!   write give the same results;
//! - every frame that decodes encodes back to a frame that decodes to it
//!   again, in at most as many bytes. Not to the same bytes: postcard reads
//!   overlong varints (`f9 00` is 121), so one frame has several encodings;
//!   we only ever send the shortest, and nothing on a link hashes or signs
//!   frame bytes, so this is harmless (seed `overlong_varint`).
//!
//! Seed corpus: `fuzz/corpus/mesh_frame/` (one frame of each kind).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sipmesh_actors::wire::{decode, decode_eof, encode, Frame, FrameError, LEN_PREFIX, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| check(data));

/// Read sizes; 1 is every position.
const STEPS: [usize; 4] = [1, 3, 5, 64];

/// The most a buffer may have reserved after `written` bytes went into it:
/// one whole frame beyond what was written, or twice what was written (the
/// amortized growth of `extend_from_slice`).
fn cap_bound(written: usize) -> usize {
    (LEN_PREFIX + MAX_FRAME_LEN + written).max(2 * written)
}

/// What the stream gave: every frame with the bytes it was encoded in, then
/// how it ended (`None`: cleanly at a frame boundary).
type Outcome = (Vec<(Frame, Vec<u8>)>, Option<String>);

/// Feed `data` in reads of `step` bytes (0: one write), decoding after each.
fn run(data: &[u8], step: usize) -> Outcome {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let step = if step == 0 { data.len().max(1) } else { step };
    let (mut written, mut consumed) = (0, 0);
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        written += chunk.len();
        loop {
            let before = buf.len();
            match decode(&mut buf) {
                Ok(Some(frame)) => {
                    let used = before - buf.len();
                    frames.push((frame, data[consumed..consumed + used].to_vec()));
                    consumed += used;
                }
                Ok(None) => {
                    // decode only ever takes bytes off the front.
                    assert_eq!(buf.len(), before, "Ok(None) consumed bytes");
                    assert!(buf.capacity() <= cap_bound(written), "capacity {}", buf.capacity());
                    break;
                }
                Err(e) => return (frames, Some(error_kind(&e))),
            }
        }
    }
    match decode_eof(&mut buf) {
        Ok(None) => (frames, None),
        Ok(Some(_)) => panic!("decode_eof found a frame decode had left"),
        Err(e) => (frames, Some(error_kind(&e))),
    }
}

/// Errors compared by what they say (`FrameError` holds io errors, so it is
/// not `PartialEq`).
fn error_kind(e: &FrameError) -> String {
    e.to_string()
}

fn check(data: &[u8]) {
    let whole = run(data, 0);
    for step in STEPS {
        assert_eq!(run(data, step), whole, "reads of {step} bytes");
    }
    for (frame, bytes) in &whole.0 {
        let mut out = BytesMut::new();
        encode(frame, &mut out).expect("a frame that decoded encodes");
        assert!(out.len() <= bytes.len(), "{frame:?} re-encodes longer");
        assert_eq!(decode(&mut out).expect("re-decodes").as_ref(), Some(frame));
        assert!(out.is_empty());
    }
}
