//! The 2G link simulator (UDP and TCP relay with delay, jitter, bandwidth
//! cap, loss, outages and rebinding). Built in the netsim issue.
