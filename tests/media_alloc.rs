//! The per-frame paths allocate nothing in steady state. A counting global allocator counts only
//! while the measuring thread has switched counting on (other harness threads are ignored).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use voxmachina::media::{InboundTranscoder, OutboundTranscoder, UlawFramer};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: TLS may already be gone while a thread exits.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn count<R>(f: impl FnOnce() -> R) -> (R, u64) {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let r = f();
    COUNTING.with(|c| c.set(false));
    (r, ALLOCS.with(Cell::get))
}

#[test]
fn steady_state_frames_do_not_allocate() {
    // Inputs prepared up front: a 20 ms Twilio frame and a 20 ms OpenAI pcm16 delta, plus an
    // odd-sized delta to exercise carrying.
    let ulaw: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
    let ulaw_b64 = STANDARD.encode(&ulaw);
    let pcm: Vec<u8> = (0..960u32).map(|i| (i * 91 % 256) as u8).collect();
    let pcm_b64 = STANDARD.encode(&pcm);
    let odd_b64 = STANDARD.encode(&pcm[..333]);

    let mut inbound = InboundTranscoder::new();
    let mut outbound = OutboundTranscoder::new();
    let mut framer = UlawFramer::new();
    let mut sink = 0usize;
    let mut step = |sink: &mut usize| {
        *sink += inbound.frame(&ulaw_b64).unwrap().len();
        outbound.push(&pcm_b64).unwrap();
        outbound.push(&odd_b64).unwrap();
        while let Some(f) = outbound.next_frame() {
            *sink += f.len();
        }
        framer.push(&ulaw_b64).unwrap();
        framer.push(&odd_b64).unwrap();
        while let Some(f) = framer.next_frame() {
            *sink += f.len();
        }
        assert!(inbound.frame("!!").is_err());
    };
    // The counter works: a real allocation is seen.
    let (v, n) = count(|| std::hint::black_box(vec![1u8; 64]));
    assert!(n >= 1 && v.len() == 64);
    // Warm-up: buffers grow to their working size.
    for _ in 0..20 {
        step(&mut sink);
    }
    let ((), allocs) = count(|| {
        for _ in 0..500 {
            step(&mut sink);
        }
    });
    assert!(sink > 0);
    assert_eq!(allocs, 0, "allocations in 500 steady-state frames");
}
