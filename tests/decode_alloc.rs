//! Decoding a decompression bomb never holds more than the limit plus the decoder's window:
//! live heap bytes are tracked with a global allocator, so this file holds a single test.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use haltgate::halt::decode::{decode_bounded, Coding, StreamDecoder, Uninspected};

struct Tracking;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

/// Heap bytes `work` held at its peak beyond what was live before it.
fn peak_of(work: impl FnOnce()) -> usize {
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    work();
    PEAK.load(Ordering::Relaxed) - before
}

const LIMIT: usize = 64 * 1024;
const MIB: usize = 1 << 20;

/// One test in this binary: the allocation count is global, so nothing may run beside it.
fn a_bomb_smaller_than_the_limit_is_cut_by_its_decoded_size() {
    // 32 MiB of zeros compress to far less than the limit: only the decoded size can stop it.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(&vec![0u8; 32 * MIB]).unwrap();
    let bomb = e.finish().unwrap();
    assert!(bomb.len() < LIMIT, "{}", bomb.len());
    let mut result = None;
    let peak = peak_of(|| result = Some(decode_bounded(&bomb, &[Coding::Gzip], LIMIT)));
    assert_eq!(result, Some(Err(Uninspected::TooLarge)));
    assert!(peak < 4 * LIMIT, "peak heap {peak}");
}

#[test]
fn a_gigabyte_bomb_costs_the_limit_plus_the_window() {
    a_bomb_smaller_than_the_limit_is_cut_by_its_decoded_size();
    // 1 GiB of zeros as gzip, 256 MiB as zstd and br, built from 1 MiB pieces so the test
    // stays quick. The zstd library allocates its window with the C allocator, which this
    // count does not see; `WindowLogMax` caps that window at 8 MiB.
    let zeros = vec![0u8; MIB];
    let gzip = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&zeros).unwrap();
        e.finish().unwrap().repeat(1024)
    };
    let zstd = {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        for _ in 0..256 {
            e.write_all(&zeros).unwrap();
        }
        e.finish().unwrap()
    };
    let brotli = {
        let mut out = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut out, 4096, 1, 22);
            for _ in 0..256 {
                w.write_all(&zeros).unwrap();
            }
        }
        out
    };
    drop(zeros);
    // (coding, bomb, what the decoder's own window may add)
    for (name, coding, bomb, window) in [
        ("gzip", Coding::Gzip, gzip, 64 * 1024),
        ("zstd", Coding::Zstd, zstd, 8 * MIB),
        ("br", Coding::Brotli, brotli, 16 * MIB),
    ] {
        let mut result = None;
        let whole = peak_of(|| result = Some(decode_bounded(&bomb, &[coding], LIMIT)));
        assert_eq!(result, Some(Err(Uninspected::TooLarge)), "{name}");
        let headers = {
            let mut h = http::HeaderMap::new();
            h.insert("content-encoding", name.parse().unwrap());
            h
        };
        let mut streamed = 0;
        let stream = peak_of(|| {
            let mut decoder = StreamDecoder::for_headers(&headers, LIMIT)
                .unwrap()
                .unwrap();
            let outcome = bomb
                .chunks(16 * 1024)
                .try_for_each(|chunk| decoder.feed(chunk, |d| streamed += d.len()));
            assert_eq!(outcome, Err(Uninspected::TooLarge), "{name} streamed");
        });
        // A step that decodes past the limit is refused whole, so nothing may have come out.
        assert!(streamed <= LIMIT, "{name}: {streamed}");
        println!(
            "{name}: {} bytes encoded; peak heap {} KiB whole, {} KiB streamed",
            bomb.len(),
            whole / 1024,
            stream / 1024
        );
        assert!(
            whole <= LIMIT + window + 256 * 1024,
            "{name}: {whole} bytes at peak"
        );
        assert!(
            stream <= LIMIT + window + 256 * 1024,
            "{name}: {stream} bytes at peak streamed"
        );
    }
}
