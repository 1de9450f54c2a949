//! The shape both writers share: callers hand a change to one task over a bounded
//! queue and wait for its answer; the task takes what is waiting in batches.
//!
//! [`Writer`] is the callers' handle, [`Job`] a change with its answer's channel,
//! [`Answer`] the answer to come. What a batch is and how it is applied is each
//! writer's own ([`super::sequencer`], [`super::roster`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::error::{Error, Result};

/// A change handed to a writer, with the channel its answer goes back on.
pub struct Job<C, A> {
    pub change: C,
    pub answer: oneshot::Sender<Result<A>>,
}

/// The handle callers use; cheap to clone. The writer's task ends once every handle
/// is dropped and the changes already handed over are applied.
pub struct Writer<C, A> {
    name: &'static str,
    jobs: mpsc::Sender<Job<C, A>>,
}

impl<C, A> Clone for Writer<C, A> {
    fn clone(&self) -> Self {
        Writer {
            name: self.name,
            jobs: self.jobs.clone(),
        }
    }
}

impl<C: Send + 'static, A: Send + 'static> Writer<C, A> {
    /// Starts the task `run` makes from the queue (at most `queue` changes wait in it
    /// before callers wait to hand theirs over). `name` says which writer it is, in
    /// errors and logs. The task is returned, for its supervision.
    pub fn start<F>(
        name: &'static str,
        queue: usize,
        run: impl FnOnce(mpsc::Receiver<Job<C, A>>) -> F,
    ) -> (Self, JoinHandle<()>)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (jobs, waiting) = mpsc::channel(queue);
        let task = tokio::spawn(run(waiting));
        (Writer { name, jobs }, task)
    }

    /// Hands over several changes back to back, so that the writer finds them
    /// together (one batch, while they fit in one); an answer each, in order.
    pub async fn hand_over_all(&self, changes: Vec<C>) -> Result<Vec<Answer<A>>> {
        let closed = || Error::Unavailable("the server is shutting down".into());
        let permits = self
            .jobs
            .reserve_many(changes.len())
            .await
            .map_err(|_| closed())?;
        Ok(permits
            .zip(changes)
            .map(|(permit, change)| {
                let (answer, answered) = oneshot::channel();
                permit.send(Job { change, answer });
                Answer {
                    name: self.name,
                    answered,
                }
            })
            .collect())
    }

    /// Hands a change over, in the order of calls; the returned [`Answer`] resolves
    /// once the writer applied it. Fails with UNAVAILABLE once the writer is gone
    /// (the server is shutting down).
    pub async fn hand_over(&self, change: C) -> Result<Answer<A>> {
        let (answer, answered) = oneshot::channel();
        self.jobs
            .send(Job { change, answer })
            .await
            .map_err(|_| Error::Unavailable("the server is shutting down".into()))?;
        Ok(Answer {
            name: self.name,
            answered,
        })
    }

    /// Hands a change over if the writer's queue has room for it now; gives it back
    /// if not (then [`Writer::hand_over`] waits for room). Fails like `hand_over`.
    pub fn try_hand_over(&self, change: C) -> Result<std::result::Result<Answer<A>, C>> {
        let (answer, answered) = oneshot::channel();
        match self.jobs.try_send(Job { change, answer }) {
            Ok(()) => Ok(Ok(Answer {
                name: self.name,
                answered,
            })),
            Err(mpsc::error::TrySendError::Full(job)) => Ok(Err(job.change)),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Err(Error::Unavailable("the server is shutting down".into()))
            }
        }
    }
}

/// A writer's answer for one change.
pub struct Answer<A> {
    name: &'static str,
    answered: oneshot::Receiver<Result<A>>,
}

impl<A> Future for Answer<A> {
    type Output = Result<A>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let name = self.name;
        Pin::new(&mut self.answered).poll(cx).map(|answered| {
            answered.unwrap_or_else(|_| Err(Error::Internal(format!("the {name} stopped"))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_come_back_and_a_gone_writer_says_so() {
        let (writer, task) = Writer::<u32, u32>::start("doubler", 4, |mut jobs| async move {
            let mut batch = Vec::new();
            while jobs.recv_many(&mut batch, 8).await > 0 {
                for job in batch.drain(..) {
                    if job.change == 0 {
                        // Dropped unanswered: the writer "died" on this one.
                        continue;
                    }
                    let _ = job.answer.send(Ok(job.change * 2));
                }
            }
        });
        assert_eq!(writer.hand_over(21).await.unwrap().await.unwrap(), 42);
        let unanswered = writer.hand_over(0).await.unwrap().await.unwrap_err();
        assert!(matches!(unanswered, Error::Internal(m) if m == "the doubler stopped"));
        let clone = writer.clone();
        drop(writer);
        drop(clone);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn handing_over_to_a_writer_that_ended_is_unavailable() {
        let (writer, task) = Writer::<u32, u32>::start("gone", 1, |jobs| async move {
            drop(jobs);
        });
        task.await.unwrap();
        assert!(matches!(
            writer.hand_over(1).await,
            Err(Error::Unavailable(_))
        ));
    }
}
