//! Encoders and bounded decoders for the codings the cache stores.
//!
//! Encoding runs on the job pool ([`super::pool`]) at store time,
//! never on a hit. Decoding (a renderer that sent gzip or br although the
//! cache asked for identity) stops at a byte cap, so a decompression bomb
//! costs at most the cache's `max_body` of memory.

use std::io::{self, Read, Write};

use super::coding::Coding;

/// Why a body could not be decoded.
#[derive(Debug)]
pub(crate) enum DecodeError {
    /// More than the cap once decoded.
    TooLarge,
    /// Not valid data of its coding.
    Corrupt(io::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge => f.write_str("larger than the cap once decoded"),
            DecodeError::Corrupt(e) => write!(f, "corrupt: {e}"),
        }
    }
}

/// zstd windows up to 2^24 bytes (16 MiB) are accepted: enough for every
/// level up to 19, and a frame cannot make the decoder reserve more.
const ZSTD_WINDOW_LOG_MAX: u32 = 24;

/// Brotli's largest window for the stored representations: 2^19 bytes
/// (512 KiB, nginx's `brotli_window` default); a page larger than that
/// still compresses, with less reach back. At quality 11 the encoder's
/// peak memory grows with the window, not the page: 9.5 MiB for a
/// 100 KiB page, 27–28 MiB for a 1 or 4 MiB page at 2^19, where brotli's
/// default 2^22 took 81 MiB for 4 MiB (output 1 % larger; measured with a
/// peak-counting allocator).
const BROTLI_LGWIN: u32 = 19;

/// Brotli's input block: 2^16 bytes at a time through quality 11's
/// optimal parser (brotli picks up to 2^18 for a large window), whose
/// working memory grows with the block: peak 9.5 → 6.7 MiB for a 100 KiB
/// page, 26.8 → 12.9 MiB for 1 MiB, for output 0.1–0.3 % larger.
const BROTLI_LGBLOCK: i32 = 16;

/// Brotli's smallest window (RFC 7932 §9.1).
const BROTLI_LGWIN_MIN: u32 = 10;

/// The window for `len` bytes: the smallest that holds them, as brotli's
/// own one-shot encoder picks. A window larger than the input compresses
/// no better, and at quality 11 the encoder's match finder takes eight
/// bytes per window position: 32 MiB for 2^22, freed after each page but
/// kept by glibc's heap, so every compressed 10 KiB page left the
/// process some 30 MiB over the cache's bound (issue 8 §6).
fn brotli_lgwin(len: usize) -> u32 {
    let bits = usize::BITS - len.saturating_sub(1).leading_zeros();
    bits.clamp(BROTLI_LGWIN_MIN, BROTLI_LGWIN)
}

/// `input` in `coding` at `level` (see `Compression::level`); identity is a
/// copy.
///
/// # Errors
///
/// Only what the encoders report; with in-memory buffers that means a bug,
/// and the caller keeps the representation it has.
pub(crate) fn encode(coding: Coding, input: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let capacity = input.len() / 3 + 64;
    match coding {
        Coding::Identity => Ok(input.to_vec()),
        Coding::Gzip => {
            let level = flate2::Compression::new(level.clamp(0, 9) as u32);
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(capacity), level);
            enc.write_all(input)?;
            enc.finish()
        }
        Coding::Deflate => {
            let level = flate2::Compression::new(level.clamp(0, 9) as u32);
            let mut enc = flate2::write::ZlibEncoder::new(Vec::with_capacity(capacity), level);
            enc.write_all(input)?;
            enc.finish()
        }
        Coding::Br => {
            let params = brotli::enc::BrotliEncoderParams {
                quality: level.clamp(0, 11),
                lgwin: brotli_lgwin(input.len()) as i32,
                lgblock: BROTLI_LGBLOCK,
                size_hint: input.len(),
                ..Default::default()
            };
            let mut out = Vec::with_capacity(capacity);
            brotli::BrotliCompress(&mut &input[..], &mut out, &params)?;
            Ok(out)
        }
        Coding::Zstd => zstd::bulk::compress(input, level.clamp(1, 22)),
    }
}

/// `input`, which is in `coding`, decoded; at most `cap` bytes.
///
/// `deflate` is read as zlib (RFC 9110 §8.4.1.2) and, failing that, as raw
/// deflate, which some servers send under that name. gzip may hold several
/// members (RFC 1952 §2.2).
///
/// # Errors
///
/// [`DecodeError::TooLarge`] past `cap`; [`DecodeError::Corrupt`] for data
/// that is not valid in `coding` (a truncated body included).
pub(crate) fn decode(coding: Coding, input: &[u8], cap: usize) -> Result<Vec<u8>, DecodeError> {
    match coding {
        Coding::Identity if input.len() > cap => Err(DecodeError::TooLarge),
        Coding::Identity => Ok(input.to_vec()),
        Coding::Gzip => read_capped(flate2::read::MultiGzDecoder::new(input), cap),
        Coding::Deflate => match read_capped(flate2::read::ZlibDecoder::new(input), cap) {
            Err(DecodeError::Corrupt(_)) => {
                read_capped(flate2::read::DeflateDecoder::new(input), cap)
            }
            other => other,
        },
        Coding::Br => read_capped(brotli::Decompressor::new(input, 4096), cap),
        Coding::Zstd => {
            let mut dec =
                zstd::stream::read::Decoder::with_buffer(input).map_err(DecodeError::Corrupt)?;
            dec.window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(DecodeError::Corrupt)?;
            read_capped(dec.single_frame(), cap)
        }
    }
}

/// Reads `reader` to its end, failing as soon as it passes `cap` bytes
/// (one byte more than `cap` is read to tell "exactly cap" from "more").
fn read_capped(reader: impl Read, cap: usize) -> Result<Vec<u8>, DecodeError> {
    let limit = u64::try_from(cap).unwrap_or(u64::MAX).saturating_add(1);
    let mut out = Vec::new();
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(DecodeError::Corrupt)?;
    if out.len() > cap {
        return Err(DecodeError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODINGS: [Coding; 5] = Coding::ALL;

    fn page(len: usize) -> Vec<u8> {
        let words = [
            "<div class=\"card\">",
            "render",
            "hydrate",
            "</div>",
            "island",
            "\n",
        ];
        let mut out = Vec::with_capacity(len);
        let mut x = 7u64;
        while out.len() < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(words[(x >> 60) as usize % words.len()].as_bytes());
            out.push(b' ');
        }
        out.truncate(len);
        out
    }

    #[test]
    fn every_coding_round_trips_at_every_level_end() {
        let body = page(30_000);
        for coding in CODINGS {
            for level in [0, 1, 6, 9, 11, 19] {
                let encoded = encode(coding, &body, level).unwrap();
                // Level 0 of gzip and deflate stores without compressing.
                if coding != Coding::Identity && level > 0 {
                    assert!(
                        encoded.len() < body.len() / 2,
                        "{coding} {level}: {}",
                        encoded.len()
                    );
                }
                let decoded = decode(coding, &encoded, body.len()).unwrap();
                assert_eq!(decoded, body, "{coding} at {level}");
            }
        }
    }

    #[test]
    fn the_brotli_window_fits_the_page() {
        assert_eq!(brotli_lgwin(0), 10);
        assert_eq!(brotli_lgwin(1024), 10);
        assert_eq!(brotli_lgwin(1025), 11);
        assert_eq!(brotli_lgwin(10 * 1024), 14);
        assert_eq!(brotli_lgwin(1 << 19), 19);
        assert_eq!(brotli_lgwin((1 << 19) + 1), 19);
        assert_eq!(brotli_lgwin(usize::MAX), 19);
        // Pages just over a window size round-trip.
        for (len, level) in [(1025, 11), (16 * 1024 + 1, 11), ((1 << 20) + 7, 1)] {
            let body = page(len);
            let encoded = encode(Coding::Br, &body, level).unwrap();
            assert_eq!(decode(Coding::Br, &encoded, usize::MAX).unwrap(), body);
        }
    }

    #[test]
    fn empty_bodies_round_trip() {
        for coding in CODINGS {
            let encoded = encode(coding, b"", 6).unwrap();
            assert_eq!(decode(coding, &encoded, 0).unwrap(), b"", "{coding}");
        }
    }

    #[test]
    fn decoding_stops_at_the_cap() {
        // A small bomb: 16 MiB of zeros compress to a few KiB.
        let zeros = vec![0u8; 16 << 20];
        for coding in CODINGS {
            let bomb = encode(coding, &zeros, 6).unwrap();
            if coding != Coding::Identity {
                assert!(bomb.len() < 1 << 20, "{coding}: {}", bomb.len());
            }
            assert!(
                matches!(decode(coding, &bomb, 1 << 20), Err(DecodeError::TooLarge)),
                "{coding}"
            );
            // Exactly at the cap is fine.
            assert_eq!(
                decode(coding, &bomb, 16 << 20).unwrap().len(),
                16 << 20,
                "{coding}"
            );
        }
    }

    #[test]
    fn corrupt_and_truncated_data_is_an_error_not_a_panic() {
        let body = page(5000);
        for coding in [Coding::Gzip, Coding::Deflate, Coding::Br, Coding::Zstd] {
            let encoded = encode(coding, &body, 6).unwrap();
            let truncated = &encoded[..encoded.len() / 2];
            assert!(
                matches!(
                    decode(coding, truncated, 1 << 20),
                    Err(DecodeError::Corrupt(_))
                ),
                "{coding} truncated"
            );
            assert!(
                matches!(
                    decode(coding, b"definitely not compressed", 1 << 20),
                    Err(DecodeError::Corrupt(_))
                ),
                "{coding} garbage"
            );
        }
    }

    #[test]
    fn raw_deflate_under_the_deflate_name_is_read() {
        let body = page(5000);
        let mut enc =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&body).unwrap();
        let raw = enc.finish().unwrap();
        assert_eq!(decode(Coding::Deflate, &raw, 1 << 20).unwrap(), body);
    }

    #[test]
    fn concatenated_gzip_members_are_one_body() {
        let mut two = encode(Coding::Gzip, b"hello ", 6).unwrap();
        two.extend(encode(Coding::Gzip, b"world", 6).unwrap());
        assert_eq!(decode(Coding::Gzip, &two, 100).unwrap(), b"hello world");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            for coding in CODINGS {
                if let Ok(out) = decode(coding, &bytes, 4096) {
                    proptest::prop_assert!(out.len() <= 4096);
                }
            }
        }
    }
}
