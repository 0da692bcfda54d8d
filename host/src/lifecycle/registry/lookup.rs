//! Why a lookup found no model to serve a request, in the registry's own
//! words (the edges map it once, through the core's error).

use super::State;
use crate::core::error::{Error, Kind};
use crate::lifecycle::residency::NOT_RESIDENT;

/// Why a request found no model to serve it: the registry's own words,
/// turned into a 404 or 503 at the HTTP edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Unknown {
        name: String,
        served: Vec<String>,
    },
    Unloaded {
        name: String,
    },
    /// Registered (`--load on-demand`) and not resident: a request loads
    /// it ([`super::Registry::resolve`]); anything else answers without it.
    NotResident {
        name: String,
    },
    Unavailable {
        name: String,
        state: State,
        reason: String,
    },
    Version {
        name: String,
        wanted: String,
        served: String,
    },
}

impl std::fmt::Display for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lookup::Unknown { name, served } => write!(
                f,
                "unknown model {name:?}; this host serves {}",
                if served.is_empty() {
                    "no models".to_owned()
                } else {
                    served.join(", ")
                }
            ),
            Lookup::Unloaded { name } => write!(
                f,
                "model {name:?} is unloaded; load it again (POST /v2/repository/models/{name}/load) \
                 to serve it"
            ),
            Lookup::NotResident { name } => write!(f, "model {name:?} is {NOT_RESIDENT}"),
            Lookup::Unavailable {
                name,
                state,
                reason,
            } => write!(f, "model {name:?} is {state:?}: {reason}"),
            Lookup::Version {
                name,
                wanted,
                served,
            } => write!(
                f,
                "model {name:?} version {wanted:?} is not served; it serves version {served:?} \
                 (/v2/models/{name}/versions/{served}/...)"
            ),
        }
    }
}

/// A registry lookup's failure: a model that is not there is not found
/// (with what is there), one that is loading or broken unavailable.
impl From<Lookup> for Error {
    fn from(lookup: Lookup) -> Self {
        let message = lookup.to_string();
        match lookup {
            Lookup::Unavailable { .. } | Lookup::NotResident { .. } => {
                Error::new(Kind::Unavailable, message)
            }
            _ => Error::not_found(message),
        }
    }
}
