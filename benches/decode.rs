//! Cost of the decoded copy the rules read, per coding, on a ~16 KiB JSON body of Slack
//! history (throughput in decoded bytes): whole bodies through `for_rules`, and the same bytes
//! as an event stream through `StreamDecoder` in 1 KiB network chunks.

use std::hint::black_box;
use std::io::Write;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http::HeaderMap;
use serde_json::json;

use haltgate::halt::decode::{for_rules, StreamDecoder};

fn body() -> Vec<u8> {
    let messages: Vec<_> = (0..120)
        .map(|i| json!({"type": "message", "user": format!("U{i:08}"), "ts": format!("1700000000.{i:06}"), "text": format!("deploy {i} finished in {} s", i * 7 % 93)}))
        .collect();
    serde_json::to_vec(&json!({"ok": true, "messages": messages, "has_more": false})).unwrap()
}

fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
    match coding {
        "gzip" => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "deflate" => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        "br" => {
            let mut out = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
                w.write_all(data).unwrap();
            }
            out
        }
        "zstd" => zstd::stream::encode_all(data, 3).unwrap(),
        _ => data.to_vec(),
    }
}

fn decoding(c: &mut Criterion) {
    let plain = body();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Bytes(plain.len() as u64));
    for coding in ["identity", "gzip", "deflate", "br", "zstd"] {
        let encoded = Bytes::from(encode(coding, &plain));
        let mut headers = HeaderMap::new();
        headers.insert("content-encoding", coding.parse().unwrap());
        group.bench_function(format!("whole/{coding}"), |b| {
            b.iter(|| for_rules(&headers, black_box(encoded.clone()), 64 * 1024).unwrap())
        });
        if coding == "identity" {
            continue;
        }
        group.bench_function(format!("stream/{coding}"), |b| {
            b.iter(|| {
                let mut decoder = StreamDecoder::for_headers(&headers, 64 * 1024)
                    .unwrap()
                    .unwrap();
                let mut decoded = 0;
                for chunk in encoded.chunks(1024) {
                    decoder.feed(chunk, |d| decoded += d.len()).unwrap();
                }
                decoded
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decoding);
criterion_main!(benches);
