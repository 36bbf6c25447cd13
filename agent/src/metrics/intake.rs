//! Items handed to the pipeline from outside its own sources (the MLflow-compatible ingest
//! endpoint), and the pipeline's answer: the contract of the channel between them.

use tokio::sync::oneshot;

use super::model::Item;

/// Why the pipeline did not take a request's items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The queue cannot take more now (full, or its state folder cannot be written): try again
    /// later.
    Full,
    /// Storing failed (disk); the message holds no secret.
    Failed(String),
}

/// Items waiting for the pipeline, and where to send its answer. Invariant: the answer is sent
/// only once the items are durable in the queue (or refused).
#[derive(Debug)]
pub struct IngestRequest {
    pub items: Vec<Item>,
    pub reply: oneshot::Sender<Result<(), Refusal>>,
}
