//! Waiting for a condition in a test: one polling helper instead of a loop per test file.

use std::future::Future;
use std::time::Duration;

/// How often [`eventually`] asks again.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// Polls `check` until it returns `Ok(true)`, for at most `limit`. An error counts as "not yet"
/// (a process may still be starting); the last one is named if the time runs out. A liveness
/// bound for the test, not a timing assertion: pick `limit` generously.
pub async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<bool>>,
{
    eventually_some(what, limit, || {
        let checked = check();
        async move { checked.await.map(|done| done.then_some(())) }
    })
    .await
}

/// Like [`eventually`] for a check that finds something: polls `check` until it returns
/// `Ok(Some(value))` and returns the value (a job view in its final state, a config once
/// applied).
pub async fn eventually_some<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last_error = match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(match last_error {
                Some(e) => e.context(format!("{what}: not within {limit:?}")),
                None => anyhow::anyhow!("{what}: not within {limit:?}"),
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn succeeds_once_the_check_holds_and_names_what_timed_out() {
        let mut n = 0;
        eventually("third try", Duration::from_secs(30), || {
            n += 1;
            let done = n >= 3;
            async move { Ok(done) }
        })
        .await
        .expect("holds on the third try");
        let err = eventually("never", Duration::from_millis(200), || async { anyhow::bail!("refused") })
            .await
            .expect_err("never holds");
        let text = format!("{err:#}");
        assert!(text.contains("never: not within") && text.contains("refused"), "{text}");
        let mut n = 0;
        let found = eventually_some("a value", Duration::from_secs(30), || {
            n += 1;
            let value = (n >= 2).then_some(n);
            async move { Ok(value) }
        })
        .await
        .expect("found on the second try");
        assert_eq!(found, 2);
    }
}
