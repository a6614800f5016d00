//! Which peers may receive which events.

use ferry_proto::{NodeId, Origin, Role};
use std::collections::BTreeSet;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// A peer receives every event this node holds.
    #[default]
    All,
    /// A peer receives only the events it wrote itself.
    Own,
    /// By the peer's role: hubs and mules receive everything (they carry it
    /// on); a clinic receives its own events and those written by hubs.
    Role,
}

impl Policy {
    /// Whether a peer `node` of `role` may receive events of `origin`.
    /// `hubs`: nodes whose verified certificates say hub.
    pub fn allows(self, node: &NodeId, role: Role, origin: &Origin, hubs: &BTreeSet<NodeId>) -> bool {
        match self {
            Policy::All => true,
            Policy::Own => origin.node == *node,
            Policy::Role => match role {
                Role::Hub | Role::Mule => true,
                Role::Clinic => origin.node == *node || hubs.contains(&origin.node),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_policy_gives_clinics_their_own_and_hub_events() {
        let (hub, a, b) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        let hubs = BTreeSet::from([hub]);
        let of = |node| Origin { node, epoch: 1 };
        let p = Policy::Role;
        assert!(p.allows(&a, Role::Clinic, &of(a), &hubs));
        assert!(p.allows(&a, Role::Clinic, &of(hub), &hubs));
        assert!(!p.allows(&a, Role::Clinic, &of(b), &hubs));
        assert!(p.allows(&hub, Role::Hub, &of(b), &hubs));
        assert!(p.allows(&b, Role::Mule, &of(a), &hubs));
        assert!(!Policy::Own.allows(&a, Role::Hub, &of(b), &hubs));
    }
}
