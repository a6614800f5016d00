//! What a node is for. The role is in the node's certificate: the CA
//! decides it, and the sync policy `role` reads it.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Always on; receives everything and carries it on.
    Hub,
    Clinic,
    /// A technician's laptop that carries events between sites.
    Mule,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown role '{0}': use hub, clinic or mule")]
pub struct ParseRoleError(String);

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Hub => "hub",
            Role::Clinic => "clinic",
            Role::Mule => "mule",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = ParseRoleError;
    fn from_str(s: &str) -> Result<Self, ParseRoleError> {
        match s {
            "hub" => Ok(Role::Hub),
            "clinic" => Ok(Role::Clinic),
            "mule" => Ok(Role::Mule),
            _ => Err(ParseRoleError(s.to_string())),
        }
    }
}
