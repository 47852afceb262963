//! Limits the kernel puts on this process.

/// The soft and hard limits on open files of this process (`RLIMIT_NOFILE`).
pub(crate) fn open_files() -> std::io::Result<(u64, u64)> {
    // SAFETY: an all-zero rlimit is a valid value of this plain C struct.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_soft_limit_is_within_the_hard_one() {
        let (soft, hard) = super::open_files().expect("getrlimit");
        assert!(soft > 0 && soft <= hard, "{soft} {hard}");
    }
}
