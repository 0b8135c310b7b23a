"""Reference plugins shipped with galaxynode, written against galaxynode.plugin only: rewards (uptime
rewards per epoch) and stellar (Stellar account ids, admission by account proof, epoch payouts)."""
