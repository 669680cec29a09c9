//! openraft's async runtime: tokio, with a random source that simulations can seed.
//!
//! openraft draws election timeouts and tick jitter from `AsyncRuntime::thread_rng()`. With
//! openraft's plain `TokioRuntime` that is `rand::rng()` (OS-seeded), so a simulation could
//! not replay which node wins an election. [`SeedableTokio`] draws from a per-thread
//! ChaCha stream instead when [`seed_thread_rng`] has been called on the current thread, and
//! from the OS otherwise (production never seeds it).
//!
//! # Design notes
//! - A thread-local, not a task-local: turmoil runs every simulated host on the test's one
//!   thread in a deterministic order, so one stream per thread replays exactly, and nothing in
//!   production can forget to enter a scope (openraft-rt's `DeterministicRng` panics outside
//!   one).
//! - Everything except `thread_rng` delegates to [`TokioRuntime`].

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::time::Duration;

use openraft_rt::{AsyncRuntime, OptionalSend, Select2, Select3, Select4};
use openraft_rt_tokio::TokioRuntime;
use rand010::rngs::SmallRng;
use rand010::{Rng, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<SmallRng>> = const { RefCell::new(None) };
}

/// Makes openraft's randomness on this thread a stream seeded by `seed` (simulations only).
/// Every later `thread_rng()` on this thread draws a fresh generator seeded from that stream.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|s| *s.borrow_mut() = Some(SmallRng::seed_from_u64(seed)));
}

/// Undoes [`seed_thread_rng`]: this thread draws from the OS again.
pub fn unseed_thread_rng() {
    SEEDED.with(|s| *s.borrow_mut() = None);
}

/// [`TokioRuntime`] with a seedable `thread_rng` (see the module docs).
#[derive(Debug)]
pub struct SeedableTokio {
    inner: TokioRuntime,
}

impl AsyncRuntime for SeedableTokio {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    #[inline]
    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    #[inline]
    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    #[inline]
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    #[inline]
    fn timeout<R, F>(duration: Duration, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        TokioRuntime::timeout(duration, future)
    }

    #[inline]
    fn timeout_at<R, F>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F>
    where
        F: Future<Output = R> + OptionalSend,
    {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn select2<A, B>(
        a: A,
        b: B,
    ) -> impl Future<Output = Select2<A::Output, B::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
    {
        TokioRuntime::select2(a, b)
    }

    fn select3<A, B, C>(
        a: A,
        b: B,
        c: C,
    ) -> impl Future<Output = Select3<A::Output, B::Output, C::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
    {
        TokioRuntime::select3(a, b, c)
    }

    fn select4<A, B, C, D>(
        a: A,
        b: B,
        c: C,
        d: D,
    ) -> impl Future<Output = Select4<A::Output, B::Output, C::Output, D::Output>> + OptionalSend
    where
        A: Future + OptionalSend,
        B: Future + OptionalSend,
        C: Future + OptionalSend,
        D: Future + OptionalSend,
    {
        TokioRuntime::select4(a, b, c, d)
    }

    #[inline]
    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SEEDED.with(|s| match s.borrow_mut().as_mut() {
            Some(stream) => SmallRng::seed_from_u64(stream.next_u64()),
            None => SmallRng::from_rng(&mut rand010::rng()),
        })
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        SeedableTokio {
            inner: TokioRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_streams_replay_and_unseeded_differ() {
        seed_thread_rng(7);
        let a: Vec<u64> = (0..4)
            .map(|_| SeedableTokio::thread_rng().next_u64())
            .collect();
        seed_thread_rng(7);
        let b: Vec<u64> = (0..4)
            .map(|_| SeedableTokio::thread_rng().next_u64())
            .collect();
        assert_eq!(a, b);
        unseed_thread_rng();
        let c: Vec<u64> = (0..4)
            .map(|_| SeedableTokio::thread_rng().next_u64())
            .collect();
        assert_ne!(a, c);
    }
}
