//! A model's life: [`registry`] maps names to [`served`] models and is the
//! one place models are loaded, swapped and unloaded; [`settings`] decides a
//! model's limits from model.toml, the API's config and the host's flags;
//! [`repository`] finds models in a folder (explicit or poll mode);
//! [`signals`] applies HUP, TTIN and TTOU.

pub mod registry;
pub mod repository;
pub mod residency;
pub mod served;
pub mod settings;
pub mod signals;
