//! Store-time compression of a 30 KB SSR page: bytes per coding and level
//! against what nginx sends at `gzip_comp_level 6`, and the CPU each level
//! costs once per stored page.
//!
//! `cargo bench --bench compression` first prints the sizes (one line per
//! coding and level, two pages), then criterion times the levels worth
//! choosing between. The same encoders and parameters as the cache's own
//! (brotli window 2^22, zstd with its defaults per level).

use std::io::Write;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// The demo's page (`examples/ssr.rs`): 60 sections of 70 words drawn from
/// twelve, so it compresses better than most real pages.
fn demo_page() -> String {
    let mut seed = "/posts/1".bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const WORDS: [&str; 12] = [
        "render", "stream", "hydrate", "cache", "edge", "layout", "props", "route", "island",
        "signal", "suspense", "shell",
    ];
    let mut html = String::from("<!doctype html><html><head><meta charset=\"utf-8\"><title>/posts/1</title><script src=\"/assets/app.3f9a1c.js\" defer></script></head><body><main>");
    for section in 0..60 {
        html.push_str(&format!(
            "<section id=\"s{section}\"><h2>Section {section}</h2><p>"
        ));
        for _ in 0..70 {
            let mut x = next();
            for _ in 0..300 {
                x = x.rotate_left(5) ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            }
            html.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
            html.push(' ');
        }
        html.push_str("</p></section>");
    }
    html.push_str("</main></body></html>\n");
    html
}

/// A page shaped like a framework's SSR output: a head with meta tags and
/// preloads, a nav, product cards with classes, prices, ids and prose from
/// a larger vocabulary, and a JSON hydration blob repeating the data.
fn framework_page() -> String {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const WORDS: [&str; 48] = [
        "the",
        "a",
        "of",
        "and",
        "to",
        "in",
        "with",
        "for",
        "is",
        "on",
        "that",
        "by",
        "this",
        "comfortable",
        "lightweight",
        "durable",
        "cotton",
        "organic",
        "recycled",
        "design",
        "everyday",
        "classic",
        "fit",
        "premium",
        "shipping",
        "returns",
        "available",
        "colors",
        "sizes",
        "limited",
        "edition",
        "handmade",
        "sustainable",
        "materials",
        "crafted",
        "collection",
        "season",
        "new",
        "best",
        "seller",
        "reviews",
        "customers",
        "love",
        "perfect",
        "gift",
        "soft",
        "warm",
        "breathable",
    ];
    let mut html = String::from(concat!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charSet=\"utf-8\"/>",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"/>",
        "<title>Shop – New arrivals</title>",
        "<link rel=\"preload\" href=\"/_next/static/media/e4af272ccee01ff0-s.p.woff2\" as=\"font\" crossorigin=\"\" type=\"font/woff2\"/>",
        "<link rel=\"stylesheet\" href=\"/_next/static/css/8f2a1b7c9d3e4f56.css\" data-precedence=\"next\"/>",
        "<script src=\"/_next/static/chunks/webpack-3c1d2e4f5a6b7c8d.js\" async=\"\"></script>",
        "</head><body class=\"__className_aaf875 antialiased\"><header class=\"flex items-center justify-between px-6 py-4 border-b\">",
        "<nav class=\"flex gap-4 text-sm font-medium\">",
    ));
    for item in ["Women", "Men", "Kids", "Home", "Sale", "Journal", "Stores"] {
        html.push_str(&format!(
            "<a class=\"hover:underline text-gray-700\" href=\"/c/{}\">{item}</a>",
            item.to_lowercase()
        ));
    }
    html.push_str("</nav></header><main class=\"grid grid-cols-2 md:grid-cols-4 gap-6 p-6\">");
    let mut data = String::from("[");
    for i in 0..64 {
        let id = next() % 1_000_000;
        let price = (next() % 20_000) as f64 / 100.0;
        let mut name = String::new();
        let mut blurb = String::new();
        for k in 0..3 {
            if k > 0 {
                name.push(' ');
            }
            name.push_str(WORDS[(next() % 48) as usize]);
        }
        for k in 0..18 {
            if k > 0 {
                blurb.push(' ');
            }
            blurb.push_str(WORDS[(next() % 48) as usize]);
        }
        html.push_str(&format!(
            "<article class=\"group relative rounded-lg border p-4 shadow-sm\" data-product-id=\"{id}\">\
             <img alt=\"{name}\" loading=\"lazy\" width=\"320\" height=\"400\" class=\"aspect-[4/5] w-full object-cover\" src=\"/_next/image?url=%2Fp%2F{id}.jpg&amp;w=640&amp;q=75\"/>\
             <h3 class=\"mt-2 text-base font-semibold\"><a href=\"/p/{id}\">{name}</a></h3>\
             <p class=\"text-sm text-gray-500 line-clamp-2\">{blurb}</p>\
             <span class=\"mt-1 block text-lg font-bold\">${price:.2}</span></article>"
        ));
        if i > 0 {
            data.push(',');
        }
        data.push_str(&format!(
            "{{\"id\":{id},\"name\":\"{name}\",\"price\":{price:.2},\"stock\":{},\"rating\":{:.1}}}",
            next() % 500,
            (next() % 50) as f64 / 10.0
        ));
    }
    data.push(']');
    html.push_str("</main><script id=\"__NEXT_DATA__\" type=\"application/json\">");
    html.push_str(&format!(
        "{{\"props\":{{\"pageProps\":{{\"products\":{data}}}}},\"page\":\"/c/[slug]\",\"buildId\":\"k2J9x0aQpZ\"}}"
    ));
    html.push_str("</script></body></html>");
    html
}

fn gzip(input: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(input).unwrap();
    e.finish().unwrap()
}

fn br(input: &[u8], quality: i32) -> Vec<u8> {
    let params = brotli::enc::BrotliEncoderParams {
        quality,
        lgwin: 22,
        size_hint: input.len(),
        ..Default::default()
    };
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut &input[..], &mut out, &params).unwrap();
    out
}

fn zstd(input: &[u8], level: i32) -> Vec<u8> {
    zstd::bulk::compress(input, level).unwrap()
}

fn sizes() {
    for (name, page) in [("demo", demo_page()), ("framework", framework_page())] {
        let page = page.as_bytes();
        let base = gzip(page, 6).len() as f64;
        eprintln!(
            "{name} page: {} bytes; gzip-6 (flate2) {} bytes",
            page.len(),
            base
        );
        for level in [1, 6, 9] {
            let n = gzip(page, level).len();
            eprintln!("  gzip {level:>2}: {n:>6}  {:.3}x gzip-6", n as f64 / base);
        }
        for level in [4, 5, 6, 9, 10, 11] {
            let n = br(page, level).len();
            eprintln!("  br   {level:>2}: {n:>6}  {:.3}x gzip-6", n as f64 / base);
        }
        for level in [3, 9, 15, 19, 22] {
            let n = zstd(page, level).len();
            eprintln!("  zstd {level:>2}: {n:>6}  {:.3}x gzip-6", n as f64 / base);
        }
        if let Ok(dir) = std::env::var("COMPRESSION_PAGE_DIR") {
            std::fs::write(format!("{dir}/{name}.html"), page).unwrap();
        }
    }
}

fn bench(c: &mut Criterion) {
    sizes();
    let page = framework_page();
    let page = page.as_bytes();
    let mut g = c.benchmark_group("store_time_30kb");
    g.measurement_time(Duration::from_secs(3));
    g.sample_size(20);
    for level in [6, 9] {
        g.bench_with_input(BenchmarkId::new("gzip", level), &level, |b, l| {
            b.iter(|| gzip(page, *l))
        });
    }
    for level in [9, 10, 11] {
        g.bench_with_input(BenchmarkId::new("br", level), &level, |b, l| {
            b.iter(|| br(page, *l))
        });
    }
    for level in [15, 19, 22] {
        g.bench_with_input(BenchmarkId::new("zstd", level), &level, |b, l| {
            b.iter(|| zstd(page, *l))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
