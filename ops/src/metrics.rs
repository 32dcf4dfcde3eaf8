//! How both binaries declare Prometheus metrics whose labels come from bounded sets.
//!
//! A label value is never minted by a client: it is either a variant of an enum declared
//! with [`label_values!`](crate::label_values) (close reasons, error codes, outcomes) or
//! a name fixed at start-up (an app's route types and bucket names). Every child of
//! such a family is created when the family is registered, so each series is exported
//! (at 0) from the first scrape: `rate()`, alerts and dashboards see it before its first
//! event, and a missing series means a missing metric, not a quiet one. The children are
//! resolved then too, so counting is an atomic add found by index, not a lookup under
//! the family's lock.

use std::collections::HashMap;
use std::marker::PhantomData;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};

/// The values of one label, a closed set. Implemented by [`label_values!`](crate::label_values),
/// which derives the index from the declaration order, so no table can disagree with it.
pub trait LabelValue: Copy + 'static {
    /// Every value, in declaration order.
    const ALL: &'static [Self];
    /// The value as exported.
    fn as_str(self) -> &'static str;
    /// Position in [`LabelValue::ALL`].
    fn index(self) -> usize;
}

/// Declares a fieldless enum whose variants are the values of a metric label:
/// `Variant => "exported_value"`. It gets `ALL`, `as_str`, `parse` and [`LabelValue`].
///
/// ```
/// switchboard_ops::label_values! {
///     /// How a reconcile ended.
///     pub enum Outcome {
///         /// Every object applied.
///         Applied => "applied",
///         Failed => "failed",
///     }
/// }
/// assert_eq!(Outcome::Failed.as_str(), "failed");
/// assert_eq!(Outcome::parse("applied"), Some(Outcome::Applied));
/// assert_eq!(Outcome::ALL.len(), 2);
/// ```
#[macro_export]
macro_rules! label_values {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $value:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value as exported (and, where it has one, as written on the wire).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $value),+
                }
            }

            /// The value written `text`, if there is one.
            pub fn parse(text: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == text)
            }
        }

        impl $crate::metrics::LabelValue for $name {
            const ALL: &'static [Self] = Self::ALL;

            fn as_str(self) -> &'static str {
                Self::as_str(self)
            }

            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

/// A counter family with one label whose values are `L`: every child is created at
/// registration and found by the value's index.
pub struct CounterByLabel<L> {
    counters: Box<[Counter]>,
    label: PhantomData<fn() -> L>,
}

impl<L: LabelValue> CounterByLabel<L> {
    /// Registers `name` (exported as `name_total`) with a `label` child per value of `L`.
    pub fn register(registry: &mut Registry, name: &str, help: &str, label: &'static str) -> Self {
        let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
        registry.register(name, help, family.clone());
        let counters = L::ALL
            .iter()
            .map(|v| family.get_or_create(&[(label, v.as_str())]).clone())
            .collect();
        Self {
            counters,
            label: PhantomData,
        }
    }

    pub fn inc(&self, value: L) {
        self.inc_by(value, 1);
    }

    pub fn inc_by(&self, value: L, n: u64) {
        if let Some(c) = self.counters.get(value.index()) {
            c.inc_by(n);
        }
    }

    /// The count so far under `value`.
    pub fn get(&self, value: L) -> u64 {
        self.counters.get(value.index()).map_or(0, Counter::get)
    }
}

/// A counter family with one label whose values are names fixed at start-up (an app's
/// route types, its bucket names): every child is created at registration, and found by
/// name or by its position in the list it was registered with.
pub struct CounterByName {
    counters: Box<[Counter]>,
    by_name: HashMap<Box<str>, usize>,
}

impl CounterByName {
    /// Registers `name` (exported as `name_total`) with a `label` child per value;
    /// a value listed twice gets one child.
    pub fn register<V: AsRef<str>>(
        registry: &mut Registry,
        name: &str,
        help: &str,
        label: &'static str,
        values: impl IntoIterator<Item = V>,
    ) -> Self {
        let family = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(name, help, family.clone());
        let mut counters = Vec::new();
        let mut by_name = HashMap::new();
        for value in values {
            let value = value.as_ref();
            let counter = family.get_or_create(&[(label, value.to_owned())]).clone();
            by_name.entry(Box::from(value)).or_insert(counters.len());
            counters.push(counter);
        }
        Self {
            counters: counters.into(),
            by_name,
        }
    }

    /// The child named `value`, if it was registered.
    pub fn get(&self, value: &str) -> Option<&Counter> {
        self.by_name.get(value).and_then(|&i| self.counters.get(i))
    }

    /// The child registered at position `index`.
    pub fn at(&self, index: usize) -> Option<&Counter> {
        self.counters.get(index)
    }
}

/// Registers `metric` as `name` and hands it back: a group keeps the handle it counts
/// with, and the registry a clone of the same metric.
pub fn register<M: Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// Registers `name` (a gauge, always 1) with the binary's version as its label: which
/// version runs where while an upgrade rolls.
pub fn register_build_info(registry: &mut Registry, name: &str, help: &str, version: &'static str) {
    let family = Family::<[(&'static str, &'static str); 1], Gauge>::default();
    registry.register(name, help, family.clone());
    family.get_or_create(&[("version", version)]).set(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::encode_registry;

    crate::label_values! {
        /// A test label.
        enum Colour {
            Red => "red",
            Light => "light_blue",
        }
    }

    #[test]
    fn every_value_is_exported_at_zero_and_counts_under_its_own_label() {
        let mut registry = Registry::default();
        let by_colour =
            CounterByLabel::<Colour>::register(&mut registry, "paint", "Paint", "colour");
        let by_name =
            CounterByName::register(&mut registry, "names", "Names", "name", ["a", "b", "a"]);
        register_build_info(&mut registry, "build_info", "Version", "1.2.3");
        by_colour.inc_by(Colour::Light, 2);
        by_name.get("b").map(Counter::inc);
        let text = encode_registry(&registry);
        for series in [
            "paint_total{colour=\"red\"} 0",
            "paint_total{colour=\"light_blue\"} 2",
            "names_total{name=\"a\"} 0",
            "names_total{name=\"b\"} 1",
            "build_info{version=\"1.2.3\"} 1",
        ] {
            assert!(text.lines().any(|l| l == series), "{series}:\n{text}");
        }
        assert_eq!(text.matches("names_total{name=\"a\"}").count(), 1, "{text}");
        assert_eq!(by_colour.get(Colour::Light), 2);
        assert!(by_name.get("c").is_none());
        assert_eq!(by_name.at(1).map(Counter::get), Some(1));
    }

    #[test]
    fn values_parse_back_and_index_in_declaration_order() {
        assert_eq!(Colour::parse("light_blue"), Some(Colour::Light));
        assert_eq!(Colour::parse("blue"), None);
        for (i, c) in Colour::ALL.iter().enumerate() {
            assert_eq!(LabelValue::index(*c), i);
        }
    }
}
