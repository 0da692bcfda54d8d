//! The core: the protocol-neutral inference API both edges call. A decoded
//! request ([`protocol::Inference`], checked against the model's metadata)
//! goes through [`infer`], which runs it alone or joins it to a [`batch`],
//! as the model's [`scheduler`] says,
//! and fails with one domain [`error::Error`] that each edge maps to its
//! statuses. [`name`] is the checked model name every entry point makes,
//! [`metrics`] what every layer counts, [`supervise`] keeps background tasks
//! from dying silently.

pub mod batch;
pub mod error;
pub mod infer;
pub mod loads;
pub mod metrics;
pub mod name;
pub mod protocol;
pub mod scheduler;
pub mod supervise;
