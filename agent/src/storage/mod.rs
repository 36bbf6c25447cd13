//! Object storage, shared by every capability that reads or writes it (localize, the sidecar's
//! shippers, artifacts saves and loads).
//!
//! * [`open`]: the one place that turns a URL and the standard environment into an
//!   `ObjectStore`, so credentials, endpoints, retries, timeouts and TLS are configured the same
//!   way everywhere. Configuration comes from the environment that each cloud's own tools read:
//!   `AWS_*` (including `AWS_ENDPOINT_URL`, `AWS_REGION`/`AWS_DEFAULT_REGION` and web identity),
//!   `GOOGLE_*` (including `GOOGLE_APPLICATION_CREDENTIALS`), `AZURE_STORAGE_*` (including the
//!   Azurite emulator).
//! * [`service`]: which service a URL names; [`error`]: every failure classified the same way
//!   ([`classify`]), its text free of credentials ([`scrub`]).
//! * [`once`]: create-only writes, for claims.
//! * [`download`]: the parallel, ranged, verified download engine, cut where [`split`] says it
//!   pays.
//!
//! Nothing here logs a credential or prints.

pub mod download;
pub mod error;
pub mod once;
pub mod open;
pub mod service;
pub mod split;

pub use error::{classify, scrub, StorageError};
pub use once::put_once;
pub use open::{
    locate, open, open_parts, open_parts_with_env, open_with_env, retry_config, Opened,
    StoreOptions,
};
pub use service::{remove_empty_folders, Service};
