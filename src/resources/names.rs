//! Deterministic names of the objects Conveyor creates, inside Kubernetes and inside brokers.
//! Every name is a pure function of the owner's identity and stays within its length limit.

/// Longest broker-side name of a Queue or Topic that Conveyor derives.
pub const MAX_NAME_IN_BROKER: usize = 64;

/// 64-bit FNV-1a: a stable hash for shortening names (not for security).
pub fn fnv1a(data: &str) -> u64 {
    data.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Shortens `name` to `max` characters by replacing its tail with a hash of the whole name.
pub fn fit(name: &str, max: usize) -> String {
    if name.len() <= max {
        return name.to_string();
    }
    let hash = format!("{:016x}", fnv1a(name));
    let keep = max.saturating_sub(hash.len() + 1);
    format!("{}_{}", &name[..keep], hash)
}

/// The broker-side name of a Queue or Topic that does not set `spec.nameInBroker`:
/// `<prefix>_<namespace>_<name>`, with the dots of the name replaced by `_` (Kubernetes names
/// never contain `_`, so the mapping is one to one), shortened with a hash past 64 characters.
pub fn default_name_in_broker(prefix: &str, namespace: &str, name: &str) -> String {
    let raw = format!("{prefix}_{namespace}_{}", name.replace('.', "_"));
    fit(&raw, MAX_NAME_IN_BROKER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_broker_are_valid_and_distinct() {
        assert_eq!(
            default_name_in_broker("topic", "shop", "orders"),
            "topic_shop_orders"
        );
        assert_eq!(
            default_name_in_broker("queue", "shop", "orders.v2"),
            "queue_shop_orders_v2"
        );
        assert_ne!(
            default_name_in_broker("topic", "shop", "orders"),
            default_name_in_broker("queue", "shop", "orders")
        );
        let long = default_name_in_broker("queue", &"n".repeat(63), &"x".repeat(253));
        assert_eq!(long.len(), MAX_NAME_IN_BROKER);
        let re_ok = long
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        assert!(re_ok, "{long}");
        assert_ne!(
            long,
            default_name_in_broker("queue", &"n".repeat(63), &"y".repeat(253))
        );
    }
}
