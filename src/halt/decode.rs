//! A bounded, decoded copy of a `Content-Encoding`-encoded body, for the rules only: the agent
//! always receives the upstream's bytes as they came.
//!
//! `gzip` (also `x-gzip`, several members), `deflate` (zlib-wrapped, or raw as some servers
//! send it), `br` and `zstd` are decoded; a list of codings (`gzip, br`) is undone in reverse
//! order, at most [`MAX_CODINGS`] deep. Decoding stops as soon as its output passes the
//! limit, and the output buffer never grows past it, so a decompression bomb costs at most
//! the limit plus the decoder's own window (32 KiB for deflate, at most 8 MiB for zstd, at
//! most 16 MiB for brotli).

use std::io::{self, Write};

use bytes::Bytes;
use flate2::{Decompress, FlushDecompress, Status};
use http::{header, HeaderMap};
use zstd::stream::raw::{DParameter, Operation};

/// Most codings undone on one body; more is treated as undecodable.
pub const MAX_CODINGS: usize = 3;

/// Largest zstd window accepted: 2^23 = 8 MiB, what RFC 8878 asks HTTP decoders to support.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// An event stream is decoded this many input bytes at a time, each step's output bounded by
/// the limit: a legitimate stream stays far below 256:1, a bomb does not.
const STREAM_STEP: usize = 256;

/// Why a body was not given to the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Uninspected {
    /// Larger than `max_body_bytes`, before or after decoding.
    TooLarge,
    /// Encoded with a known coding but not decodable (corrupt, truncated, trailing bytes).
    Undecodable,
    /// A coding this proxy does not decode.
    UnknownEncoding,
    /// Reading the body from the upstream failed.
    ReadFailed,
}

impl Uninspected {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Uninspected::TooLarge => "too_large",
            Uninspected::Undecodable => "undecodable",
            Uninspected::UnknownEncoding => "unknown_encoding",
            Uninspected::ReadFailed => "read_failed",
        }
    }
}

/// One content coding this proxy decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// `gzip` or `x-gzip` (RFC 1952), one member or several.
    Gzip,
    /// `deflate`: zlib-wrapped (RFC 1950) as specified, or raw (RFC 1951) as some servers send.
    Deflate,
    /// `br` (RFC 7932).
    Brotli,
    /// `zstd` (RFC 8878).
    Zstd,
}

/// The codings named by every `Content-Encoding` header, in the order they were applied;
/// `identity` is skipped. Empty when the body is not encoded.
pub fn codings(headers: &HeaderMap) -> Result<Vec<Coding>, Uninspected> {
    let mut found = Vec::new();
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let value = value.to_str().map_err(|_| Uninspected::UnknownEncoding)?;
        for token in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let named = |name: &str| token.eq_ignore_ascii_case(name);
            let coding = if named("identity") {
                continue;
            } else if named("gzip") || named("x-gzip") {
                Coding::Gzip
            } else if named("deflate") {
                Coding::Deflate
            } else if named("br") {
                Coding::Brotli
            } else if named("zstd") {
                Coding::Zstd
            } else {
                return Err(Uninspected::UnknownEncoding);
            };
            found.push(coding);
        }
    }
    if found.len() > MAX_CODINGS {
        return Err(Uninspected::Undecodable);
    }
    Ok(found)
}

/// The body as the rules read it: `raw` itself when it is not encoded, else its decoded
/// copy of at most `limit` bytes.
pub fn for_rules(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Bytes, Uninspected> {
    let codings = codings(headers)?;
    if codings.is_empty() || raw.is_empty() {
        return Ok(raw);
    }
    decode_bounded(&raw, &codings, limit).map(Bytes::from)
}

/// Undoes `codings` (in the order they were applied) on a whole body. Fails with
/// [`Uninspected::TooLarge`] as soon as any step's output passes `limit`.
pub fn decode_bounded(
    encoded: &[u8],
    codings: &[Coding],
    limit: usize,
) -> Result<Vec<u8>, Uninspected> {
    let mut layers = codings.iter().rev();
    let Some(&last_applied) = layers.next() else {
        return Ok(encoded.to_vec());
    };
    let mut decoded = decode_one(encoded, last_applied, limit)?;
    for &coding in layers {
        decoded = decode_one(&decoded, coding, limit)?;
    }
    Ok(decoded)
}

fn decode_one(encoded: &[u8], coding: Coding, limit: usize) -> Result<Vec<u8>, Uninspected> {
    let mut layer = Layer::new(coding, limit)?;
    layer.write(encoded).map_err(|e| layer.reason(e))?;
    layer.finish().map_err(|e| layer.reason(e))?;
    Ok(std::mem::take(&mut layer.sink_mut().data))
}

/// Decodes an encoded event stream chunk by chunk, as it streams.
pub struct StreamDecoder {
    /// Outermost coding (the last applied) first.
    layers: Vec<Layer>,
    failed: Option<Uninspected>,
}

impl StreamDecoder {
    /// A decoder for a stream with these response headers; `None` when it is not encoded.
    pub fn for_headers(headers: &HeaderMap, limit: usize) -> Result<Option<Self>, Uninspected> {
        let codings = codings(headers)?;
        if codings.is_empty() {
            return Ok(None);
        }
        let layers = codings
            .iter()
            .rev()
            .map(|&coding| Layer::new(coding, limit))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Self {
            layers,
            failed: None,
        }))
    }

    /// Decodes `chunk`, handing the decoded bytes to `on_decoded` step by step. After an
    /// error every later call fails the same way without decoding.
    pub fn feed(
        &mut self,
        chunk: &[u8],
        mut on_decoded: impl FnMut(&[u8]),
    ) -> Result<(), Uninspected> {
        if let Some(reason) = self.failed {
            return Err(reason);
        }
        for step in chunk.chunks(STREAM_STEP) {
            if let Err(reason) = feed_layers(&mut self.layers, step, &mut on_decoded) {
                self.failed = Some(reason);
                self.layers.clear();
                return Err(reason);
            }
        }
        Ok(())
    }
}

/// Passes `input` through the first layer and its output through the rest.
fn feed_layers(
    layers: &mut [Layer],
    input: &[u8],
    on_decoded: &mut dyn FnMut(&[u8]),
) -> Result<(), Uninspected> {
    let Some((first, rest)) = layers.split_first_mut() else {
        on_decoded(input);
        return Ok(());
    };
    first.write(input).map_err(|e| first.reason(e))?;
    let output = std::mem::take(&mut first.sink_mut().data);
    if output.is_empty() {
        return Ok(());
    }
    let result = if rest.is_empty() {
        on_decoded(&output);
        Ok(())
    } else {
        output
            .chunks(STREAM_STEP)
            .try_for_each(|step| feed_layers(rest, step, on_decoded))
    };
    // The buffer is kept for the next step.
    let sink = first.sink_mut();
    if sink.data.capacity() < output.capacity() {
        sink.data = output;
        sink.data.clear();
    }
    result
}

/// Decoded output that refuses to grow past its cap.
#[derive(Debug, Default)]
struct Bounded {
    data: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let needed = self.data.len() + buf.len();
        if needed > self.cap {
            self.over = true;
            return Err(io::Error::other("decoded body larger than the limit"));
        }
        if needed > self.data.capacity() {
            // Doubling, but never past the cap.
            let target = needed.max(self.data.capacity() * 2).min(self.cap);
            self.data.reserve_exact(target - self.data.len());
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One coding's decoder, push-driven, writing into a [`Bounded`] sink.
enum Layer {
    Gzip(Box<flate2::write::MultiGzDecoder<Bounded>>),
    Deflate(Box<Inflate>),
    Brotli(Box<brotli_decompressor::DecompressorWriter<Bounded>>),
    Zstd(Box<Unzstd>),
}

/// `deflate`: zlib-wrapped or raw, told apart by the first two bytes.
struct Inflate {
    /// The first bytes, until there are two to look at.
    head: Vec<u8>,
    decompress: Option<Decompress>,
    done: bool,
    sink: Bounded,
}

struct Unzstd {
    decoder: zstd::stream::raw::Decoder<'static>,
    /// The last frame ended and nothing followed yet.
    frame_done: bool,
    sink: Bounded,
}

impl Layer {
    fn new(coding: Coding, limit: usize) -> Result<Self, Uninspected> {
        let sink = Bounded {
            data: Vec::new(),
            cap: limit,
            over: false,
        };
        Ok(match coding {
            Coding::Gzip => Layer::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink))),
            Coding::Deflate => Layer::Deflate(Box::new(Inflate {
                head: Vec::with_capacity(2),
                decompress: None,
                done: false,
                sink,
            })),
            Coding::Brotli => Layer::Brotli(Box::new(
                brotli_decompressor::DecompressorWriter::new(sink, 4096),
            )),
            Coding::Zstd => {
                let mut decoder =
                    zstd::stream::raw::Decoder::new().map_err(|_| Uninspected::Undecodable)?;
                decoder
                    .set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(|_| Uninspected::Undecodable)?;
                Layer::Zstd(Box::new(Unzstd {
                    decoder,
                    frame_done: false,
                    sink,
                }))
            }
        })
    }

    fn sink_mut(&mut self) -> &mut Bounded {
        match self {
            Layer::Gzip(decoder) => decoder.get_mut(),
            Layer::Deflate(inflate) => &mut inflate.sink,
            Layer::Brotli(decoder) => decoder.get_mut(),
            Layer::Zstd(unzstd) => &mut unzstd.sink,
        }
    }

    /// What an error means: the sink refused (too large) or the data is bad.
    fn reason(&mut self, _error: io::Error) -> Uninspected {
        if self.sink_mut().over {
            Uninspected::TooLarge
        } else {
            Uninspected::Undecodable
        }
    }

    fn write(&mut self, input: &[u8]) -> io::Result<()> {
        match self {
            // The decoder holds back what it decoded until flushed; a stream needs it now.
            Layer::Gzip(decoder) => decoder.write_all(input).and_then(|()| decoder.flush()),
            Layer::Deflate(inflate) => inflate.write(input),
            Layer::Brotli(decoder) => decoder.write_all(input),
            Layer::Zstd(unzstd) => unzstd.write(input),
        }
    }

    /// Checks that the stream ended where the body did.
    fn finish(&mut self) -> io::Result<()> {
        match self {
            Layer::Gzip(decoder) => decoder.try_finish(),
            Layer::Deflate(inflate) if inflate.done => Ok(()),
            Layer::Brotli(decoder) => decoder.close(),
            Layer::Zstd(unzstd) if unzstd.frame_done => Ok(()),
            Layer::Deflate(_) | Layer::Zstd(_) => Err(truncated()),
        }
    }
}

fn truncated() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "encoded body ends early")
}

fn trailing() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "bytes after the encoded stream")
}

impl Inflate {
    fn write(&mut self, mut input: &[u8]) -> io::Result<()> {
        if self.decompress.is_none() {
            let take = (2 - self.head.len()).min(input.len());
            self.head.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.head.len() < 2 {
                return Ok(());
            }
            let head = std::mem::take(&mut self.head);
            self.decompress = Some(Decompress::new(is_zlib_header(head[0], head[1])));
            self.inflate(&head)?;
        }
        self.inflate(input)
    }

    fn inflate(&mut self, mut input: &[u8]) -> io::Result<()> {
        let Some(decompress) = self.decompress.as_mut() else {
            return Ok(());
        };
        let mut out = [0u8; 8 * 1024];
        loop {
            if self.done {
                return if input.is_empty() {
                    Ok(())
                } else {
                    Err(trailing())
                };
            }
            let (before_in, before_out) = (decompress.total_in(), decompress.total_out());
            let status = decompress
                .decompress(input, &mut out, FlushDecompress::None)
                .map_err(io::Error::other)?;
            let used = (decompress.total_in() - before_in) as usize;
            let made = (decompress.total_out() - before_out) as usize;
            self.sink.write_all(&out[..made])?;
            input = &input[used..];
            match status {
                Status::StreamEnd => self.done = true,
                _ if made == out.len() => {}
                _ if input.is_empty() || (used == 0 && made == 0) => return Ok(()),
                _ => {}
            }
        }
    }
}

/// RFC 1950: compression method 8 with a window of at most 32 KiB, and a header checksum.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

impl Unzstd {
    fn write(&mut self, mut input: &[u8]) -> io::Result<()> {
        let mut out = [0u8; 8 * 1024];
        loop {
            let status = self.decoder.run_on_buffers(input, &mut out)?;
            self.sink.write_all(&out[..status.bytes_written])?;
            input = &input[status.bytes_read..];
            self.frame_done = status.remaining == 0;
            if status.bytes_written == out.len() {
                continue;
            }
            if input.is_empty() {
                return Ok(());
            }
            if status.bytes_read == 0 {
                return Err(trailing());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    const SLACK: &[u8] = br#"{"ok":false,"error":"not_in_channel"}"#;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn brotli(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        {
            let mut w = ::brotli::CompressorWriter::new(&mut out, 4096, 5, 22);
            w.write_all(data).unwrap();
        }
        out
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::stream::encode_all(data, 3).unwrap()
    }

    fn encoded(name: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, name.parse().unwrap());
        headers
    }

    #[test]
    fn every_coding_decodes_to_the_original() {
        for (name, body) in [
            ("gzip", gzip(SLACK)),
            ("x-gzip", gzip(SLACK)),
            ("deflate", zlib(SLACK)),
            ("deflate", raw_deflate(SLACK)),
            ("br", brotli(SLACK)),
            ("zstd", zstd(SLACK)),
            ("identity", SLACK.to_vec()),
        ] {
            let decoded = for_rules(&encoded(name), body.into(), 1024).unwrap();
            assert_eq!(&decoded[..], SLACK, "{name}");
        }
    }

    #[test]
    fn codings_are_undone_in_reverse_order() {
        let body = brotli(&gzip(SLACK));
        let decoded = for_rules(&encoded("gzip, br"), body.clone().into(), 1024).unwrap();
        assert_eq!(&decoded[..], SLACK);
        // The wrong order is bad data, not a wrong body.
        assert_eq!(
            for_rules(&encoded("br, gzip"), body.into(), 1024),
            Err(Uninspected::Undecodable)
        );
        assert_eq!(
            codings(&encoded("gzip, gzip, gzip, gzip")),
            Err(Uninspected::Undecodable)
        );
    }

    #[test]
    fn unknown_codings_are_named() {
        assert_eq!(
            for_rules(&encoded("compress"), Bytes::from_static(b"x"), 64),
            Err(Uninspected::UnknownEncoding)
        );
    }

    #[test]
    fn corrupt_truncated_and_trailing_bodies_are_undecodable() {
        let mut corrupt = gzip(SLACK);
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0xff;
        let whole = gzip(SLACK);
        let truncated = whole[..whole.len() - 4].to_vec();
        for (name, body) in [
            ("gzip", corrupt),
            ("gzip", truncated),
            ("gzip", b"not gzip at all".to_vec()),
            ("deflate", zlib(SLACK)[..10].to_vec()),
            ("deflate", [zlib(SLACK), b"junk".to_vec()].concat()),
            ("br", brotli(SLACK)[..5].to_vec()),
            ("zstd", zstd(SLACK)[..8].to_vec()),
            ("zstd", b"\x28\xb5\x2f\xfdgarbage".to_vec()),
        ] {
            assert_eq!(
                for_rules(&encoded(name), body.into(), 1024),
                Err(Uninspected::Undecodable),
                "{name}"
            );
        }
    }

    #[test]
    fn output_past_the_limit_stops_decoding() {
        let zeros = vec![0u8; 4 << 20];
        for (name, body) in [
            ("gzip", gzip(&zeros)),
            ("deflate", zlib(&zeros)),
            ("br", brotli(&zeros)),
            ("zstd", zstd(&zeros)),
        ] {
            assert!(body.len() < 64 * 1024, "{name} bomb fits the limit encoded");
            assert_eq!(
                for_rules(&encoded(name), body.into(), 64 * 1024),
                Err(Uninspected::TooLarge),
                "{name}"
            );
        }
        // Exactly the limit still decodes.
        let decoded = for_rules(&encoded("gzip"), gzip(&zeros[..1000]).into(), 1000).unwrap();
        assert_eq!(decoded.len(), 1000);
    }

    #[test]
    fn several_gzip_members_decode_as_one_body() {
        let body = [
            gzip(b"{\"ok\":false,"),
            gzip(b"\"error\":\"not_in_channel\"}"),
        ]
        .concat();
        let decoded = for_rules(&encoded("gzip"), body.into(), 1024).unwrap();
        assert_eq!(&decoded[..], SLACK);
    }

    #[test]
    fn a_stream_decodes_byte_by_byte_and_in_one_piece() {
        let events: Vec<u8> = (0..200)
            .flat_map(|i| format!("event: delta\ndata: {{\"n\":{i}}}\n\n").into_bytes())
            .collect();
        for (name, body) in [
            ("gzip", gzip(&events)),
            ("deflate", raw_deflate(&events)),
            ("br", brotli(&events)),
            ("zstd", zstd(&events)),
            ("gzip, zstd", zstd(&gzip(&events))),
        ] {
            for piece in [1, 7, body.len()] {
                let mut decoder = StreamDecoder::for_headers(&encoded(name), 64 * 1024)
                    .unwrap()
                    .unwrap();
                let mut out = Vec::new();
                for chunk in body.chunks(piece) {
                    decoder.feed(chunk, |d| out.extend_from_slice(d)).unwrap();
                }
                assert_eq!(out, events, "{name} in pieces of {piece}");
            }
        }
        assert!(StreamDecoder::for_headers(&HeaderMap::new(), 64)
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_stream_bomb_stops_at_the_step_limit() {
        let bomb = gzip(&vec![b'a'; 8 << 20]);
        let mut decoder = StreamDecoder::for_headers(&encoded("gzip"), 64 * 1024)
            .unwrap()
            .unwrap();
        let mut seen = 0;
        let result = decoder.feed(&bomb, |d| seen += d.len());
        assert_eq!(result, Err(Uninspected::TooLarge));
        assert!(seen <= 64 * 1024, "{seen}");
        assert_eq!(decoder.feed(b"x", |_| {}), Err(Uninspected::TooLarge));
    }
}
