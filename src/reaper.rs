//! The reaper: stops deployments idle past `pause_at`, deletes those idle past `delete_at`,
//! and finishes deletions that failed part-way. Failed actions are retried with exponential
//! backoff and logged; none is forgotten.
//!
//! Its decisions come from [`decide`], a pure function; the loop around it only reads the due
//! rows, runs the chosen actions concurrently and records their outcome.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::deployments::{DeployError, Deployments};
use crate::domain::{Millis, Status, now_millis};
use crate::metrics::{METRICS, ReaperLabels};
use crate::store::DueRow;

/// What the reaper does to one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Stop the container; the row stays, status `stopped`.
    Pause(String),
    /// Delete the deployment entirely.
    Delete(String),
}

impl Action {
    fn id(&self) -> &str {
        match self {
            Action::Pause(id) | Action::Delete(id) => id,
        }
    }
}

/// Failed attempts of one deployment's action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Consecutive failures.
    pub failures: u32,
    /// Not before this time.
    pub next_at: Millis,
}

/// Backoff after `failures` consecutive failures: 1 s, 2 s, 4 s … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 1u64 << failures.saturating_sub(1).min(9);
    Duration::from_secs(secs.min(300))
}

/// Chooses the actions due at `now`. A deletion wins over a pause; deployments with an
/// action in flight or waiting out a backoff are left alone.
pub fn decide(
    now: Millis,
    rows: &[DueRow],
    in_flight: &HashSet<String>,
    retries: &HashMap<String, Retry>,
) -> Vec<Action> {
    rows.iter()
        .filter(|r| !in_flight.contains(&r.id))
        .filter(|r| retries.get(&r.id).is_none_or(|x| x.next_at <= now))
        .filter_map(|r| {
            let delete_due = r.delete_at.is_some_and(|t| t <= now);
            let pause_due = r.pause_at.is_some_and(|t| t <= now);
            match r.status {
                Status::Deleting => Some(Action::Delete(r.id.clone())),
                Status::Running | Status::Stopped if delete_due => {
                    Some(Action::Delete(r.id.clone()))
                }
                Status::Running if pause_due => Some(Action::Pause(r.id.clone())),
                _ => None,
            }
        })
        .collect()
}

/// Runs the reaper until `cancel` fires.
pub async fn run(
    deployments: Deployments,
    interval: Duration,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(Action, Result<(), String>)>();
    let mut in_flight: HashSet<String> = HashSet::new();
    let mut retries: HashMap<String, Retry> = HashMap::new();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            Some((action, outcome)) = done_rx.recv() => {
                in_flight.remove(action.id());
                record(&mut retries, &action, outcome);
            }
            _ = tick.tick() => {
                let now = now_millis();
                let rows = match deployments.due(now).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        tracing::warn!(error = %e, "reaper cannot read due deployments");
                        continue;
                    }
                };
                // Forget retry state of rows that are no longer due (deleted meanwhile).
                let due: HashSet<&str> = rows.iter().map(|r| r.id.as_str()).collect();
                retries.retain(|id, _| due.contains(id.as_str()));
                tracing::debug!(?rows, "due rows");
                for action in decide(now, &rows, &in_flight, &retries) {
                    in_flight.insert(action.id().to_owned());
                    let d = deployments.clone();
                    let tx = done_tx.clone();
                    tracker.spawn(async move {
                        let outcome = perform(&d, &action).await;
                        let _ = tx.send((action, outcome));
                    });
                }
            }
        }
    }
}

async fn perform(d: &Deployments, action: &Action) -> Result<(), String> {
    let (kind, result) = match action {
        Action::Pause(id) => ("pause", d.pause(id).await),
        Action::Delete(id) => {
            // A row already `deleting` may be in the hands of an API delete: the attempt
            // then stands back, so this is no news.
            tracing::debug!(deployment.id = %id, "reaper deleting");
            ("delete", d.delete(id).await)
        }
    };
    let result = match result {
        Ok(()) | Err(DeployError::NotFound) => Ok(()),
        Err(e) => Err(e.to_string()),
    };
    let outcome = if result.is_ok() { "ok" } else { "error" };
    METRICS
        .reaper_actions
        .get_or_create(&ReaperLabels {
            action: kind,
            outcome,
        })
        .inc();
    result
}

fn record(retries: &mut HashMap<String, Retry>, action: &Action, outcome: Result<(), String>) {
    let id = action.id().to_owned();
    match outcome {
        Ok(()) => {
            retries.remove(&id);
        }
        Err(error) => {
            let failures = retries.get(&id).map_or(0, |r| r.failures) + 1;
            let wait = backoff(failures);
            tracing::warn!(
                deployment.id = %id,
                ?action,
                failures,
                retry_in_secs = wait.as_secs(),
                error,
                "reaper action failed; will retry"
            );
            let next_at = now_millis() + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX);
            retries.insert(id, Retry { failures, next_at });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        id: &str,
        status: Status,
        pause_at: Option<Millis>,
        delete_at: Option<Millis>,
    ) -> DueRow {
        DueRow {
            id: id.to_owned(),
            status,
            pause_at,
            delete_at,
        }
    }

    #[test]
    fn pauses_running_deployments_past_their_pause_deadline() {
        let rows = [row("a", Status::Running, Some(100), None)];
        assert_eq!(
            decide(100, &rows, &HashSet::new(), &HashMap::new()),
            vec![Action::Pause("a".into())]
        );
        assert!(decide(99, &rows, &HashSet::new(), &HashMap::new()).is_empty());
    }

    #[test]
    fn stopped_deployments_are_not_paused_again() {
        let rows = [row("a", Status::Stopped, Some(100), Some(500))];
        assert!(decide(200, &rows, &HashSet::new(), &HashMap::new()).is_empty());
        assert_eq!(
            decide(500, &rows, &HashSet::new(), &HashMap::new()),
            vec![Action::Delete("a".into())]
        );
    }

    #[test]
    fn deletion_wins_over_pause() {
        let rows = [row("a", Status::Running, Some(100), Some(100))];
        assert_eq!(
            decide(100, &rows, &HashSet::new(), &HashMap::new()),
            vec![Action::Delete("a".into())]
        );
    }

    #[test]
    fn pending_deletions_are_always_retried() {
        let rows = [row("a", Status::Deleting, None, None)];
        assert_eq!(
            decide(0, &rows, &HashSet::new(), &HashMap::new()),
            vec![Action::Delete("a".into())]
        );
    }

    #[test]
    fn creating_rows_are_left_to_their_create() {
        let rows = [row("a", Status::Creating, Some(0), Some(0))];
        assert!(decide(100, &rows, &HashSet::new(), &HashMap::new()).is_empty());
    }

    #[test]
    fn in_flight_and_backed_off_actions_wait() {
        let rows = [
            row("a", Status::Running, Some(0), None),
            row("b", Status::Running, Some(0), None),
        ];
        let in_flight = HashSet::from(["a".to_owned()]);
        let retries = HashMap::from([(
            "b".to_owned(),
            Retry {
                failures: 1,
                next_at: 1000,
            },
        )]);
        assert!(decide(999, &rows, &in_flight, &retries).is_empty());
        assert_eq!(
            decide(1000, &rows, &in_flight, &retries),
            vec![Action::Pause("b".into())]
        );
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }

    #[test]
    fn failures_are_recorded_and_cleared() {
        let mut retries = HashMap::new();
        let a = Action::Delete("a".into());
        record(&mut retries, &a, Err("boom".into()));
        record(&mut retries, &a, Err("boom".into()));
        assert_eq!(retries["a"].failures, 2);
        record(&mut retries, &a, Ok(()));
        assert!(retries.is_empty());
    }
}
