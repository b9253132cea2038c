//! Shared by the examples that cache: glibc's malloc tuned for a process
//! that holds a bounded cache (issue 8 §6, BENCHMARKS.md "Resident memory
//! under load").
//!
//! glibc serves blocks from 128 KiB up with a mapping of their own and
//! gives them back to the system when freed, but it raises that threshold
//! to the size of every such block freed (up to 32 MiB), for good. An
//! encoder's working buffers, a Redis value or a large read buffer freed
//! once is enough: from then on blocks of that size come from the heaps,
//! where transient buffers interleave with the cached pages and the heaps
//! keep what they free. Measured with `scripts/cache-rss.sh` over a 64 MiB
//! cache and 100 KiB pages, the process then holds 94–98 MiB (108 MiB with
//! the Redis tier) instead of 84–85 MiB with the threshold fixed at 64 KiB.
//!
//! The library cannot set it: the crate forbids `unsafe`, so no
//! `mallopt`, and glibc reads `MALLOC_MMAP_THRESHOLD_` once, when the
//! process starts. So an application sets it in its environment (a
//! systemd `Environment=`, a container's `ENV`), and these examples, which
//! are meant to be run as they are, restart themselves with it.

/// The threshold the examples run with, in bytes: 64 KiB, below a mapped
/// cached body (64 KiB up) and above typical header-sized blocks.
const THRESHOLD: &str = "65536";

/// Restarts this process in place (`exec`: the same process id, arguments
/// and open files) with `MALLOC_MMAP_THRESHOLD_=65536`, on Linux with
/// glibc, unless the environment already sets `MALLOC_MMAP_THRESHOLD_`
/// (any value: the operator's choice stands). Returns only when it does
/// nothing, or when the restart failed (said on stderr; the process goes
/// on with glibc's defaults). Call it first in `main`.
pub(crate) fn fix_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::unix::process::CommandExt;

        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some() {
            return;
        }
        let Ok(exe) = std::env::current_exe() else {
            return;
        };
        let mut args = std::env::args_os();
        let mut command = std::process::Command::new(exe);
        if let Some(name) = args.next() {
            command.arg0(name);
        }
        let err = command
            .args(args)
            .env("MALLOC_MMAP_THRESHOLD_", THRESHOLD)
            .exec();
        eprintln!("could not restart with MALLOC_MMAP_THRESHOLD_={THRESHOLD}: {err}");
    }
}
