//! Tells the Redis tier's tests and benches whether a Redis is at hand, so
//! that without one they are reported as ignored rather than silently
//! passed: `cfg(tower_ssr_redis)` when `TOWER_SSR_REDIS_URL` is set or
//! `redis-server` is on `PATH` (the tests then start their own), and
//! `cfg(tower_ssr_redis_server)` when `redis-server` is on `PATH` (tests
//! that stop and restart a private server), and `cfg(tower_ssr_redis_cluster)`
//! when `TOWER_SSR_REDIS_CLUSTER_URLS` is set or both `redis-server` and
//! `redis-cli` are on `PATH` (the tests then make their own 3-master
//! cluster). The library itself never reads any of them.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tower_ssr_redis)");
    println!("cargo::rustc-check-cfg=cfg(tower_ssr_redis_server)");
    println!("cargo::rustc-check-cfg=cfg(tower_ssr_redis_cluster)");
    println!("cargo::rerun-if-changed=build.rs");
    // Only builds with the Redis tier have tests that need Redis; others
    // (most dependents) do not rerun this when `PATH` changes.
    if std::env::var_os("CARGO_FEATURE_REDIS").is_none() {
        return;
    }
    println!("cargo::rerun-if-env-changed=TOWER_SSR_REDIS_URL");
    println!("cargo::rerun-if-env-changed=TOWER_SSR_REDIS_CLUSTER_URLS");
    println!("cargo::rerun-if-env-changed=PATH");
    let on_path = |tool: &str| {
        std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| is_executable(&dir.join(tool)))
        })
    };
    let server = on_path("redis-server");
    let url = std::env::var("TOWER_SSR_REDIS_URL").is_ok_and(|u| !u.is_empty());
    if server || url {
        println!("cargo::rustc-cfg=tower_ssr_redis");
    }
    if server {
        println!("cargo::rustc-cfg=tower_ssr_redis_server");
    }
    let cluster = std::env::var("TOWER_SSR_REDIS_CLUSTER_URLS").is_ok_and(|u| !u.trim().is_empty());
    if cluster || (server && on_path("redis-cli")) {
        println!("cargo::rustc-cfg=tower_ssr_redis_cluster");
    }
}

#[cfg(unix)]
fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    file.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(file: &Path) -> bool {
    file.is_file() || file.with_extension("exe").is_file()
}
