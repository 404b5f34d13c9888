//! Every signal blocked while HTTP runs.
//!
//! The caller is a Postgres process: its signal handlers (SIGTERM, SIGINT, SIGHUP,
//! SIGUSR1 for latches, …) call into Postgres, which panics (pgrx) or corrupts state when
//! run on any thread but the main one. ureq resolves names on a helper thread when a
//! timeout is set, and a new thread inherits the mask of the thread that spawns it: with
//! everything blocked during the request, no helper thread can ever take a signal. The
//! main thread gets its pending signals as soon as the mask is restored, right after the
//! request, whose length the timeouts bound.

use std::mem::MaybeUninit;

/// Blocks every (blockable) signal on this thread until dropped, then restores the
/// previous mask exactly.
pub(crate) struct SignalsBlocked {
    previous: libc::sigset_t,
}

impl SignalsBlocked {
    pub(crate) fn new() -> Self {
        // SAFETY: sigfillset initialises `all`; pthread_sigmask only reads `all` and
        // writes `previous`, both valid for the call. SIG_BLOCK cannot fail with valid
        // arguments (EINVAL is for a bad `how`).
        unsafe {
            let mut all = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigfillset(all.as_mut_ptr());
            let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, all.as_ptr(), previous.as_mut_ptr());
            assert_eq!(rc, 0, "pthread_sigmask(SIG_BLOCK) failed");
            SignalsBlocked {
                previous: previous.assume_init(),
            }
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: `previous` was filled by pthread_sigmask in new().
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocked(signal: libc::c_int) -> bool {
        // SAFETY: a null `set` only queries the current mask into `current`.
        unsafe {
            let mut current = MaybeUninit::<libc::sigset_t>::uninit();
            libc::sigemptyset(current.as_mut_ptr());
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), current.as_mut_ptr());
            libc::sigismember(current.as_ptr(), signal) == 1
        }
    }

    #[test]
    fn blocks_then_restores_and_threads_inherit() {
        // Runs on a fresh thread so the test harness's own mask does not matter.
        std::thread::spawn(|| {
            assert!(!blocked(libc::SIGINT));
            {
                let _guard = SignalsBlocked::new();
                for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
                    assert!(blocked(s));
                }
                // A helper thread spawned now (as ureq's resolver is) starts blocked.
                let child = std::thread::spawn(|| blocked(libc::SIGTERM));
                assert!(child.join().unwrap());
            }
            assert!(!blocked(libc::SIGINT));
            assert!(!blocked(libc::SIGUSR1));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn restores_a_mask_that_was_already_partly_blocked() {
        std::thread::spawn(|| {
            // SAFETY: plain mask manipulation on this thread.
            unsafe {
                let mut one = MaybeUninit::<libc::sigset_t>::uninit();
                libc::sigemptyset(one.as_mut_ptr());
                libc::sigaddset(one.as_mut_ptr(), libc::SIGUSR2);
                libc::pthread_sigmask(libc::SIG_BLOCK, one.as_ptr(), std::ptr::null_mut());
            }
            drop(SignalsBlocked::new());
            assert!(blocked(libc::SIGUSR2), "was blocked before: stays blocked");
            assert!(!blocked(libc::SIGINT));
        })
        .join()
        .unwrap();
    }
}
