//! Enums whose values travel as fixed lower-case names in JSON, OTLP attributes and logs.
//!
//! `named_enum!` gives each variant its name once: `name()`, `Display`, `FromStr` and serde all
//! use it, so the wire form cannot drift from the code. With `numeric`, the enum also has an
//! `Other(u16)` variant for raw kernel values this build does not know; it travels as the
//! number in decimal (`"17"`), as events always printed unknown values.

/// A name that is not one of the enum's.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown {what} {got:?}")]
pub struct UnknownName {
    /// Which enum.
    pub what: &'static str,
    /// What was given.
    pub got: String,
}

macro_rules! named_enum {
    (@common $name:ident, $what:literal) => {
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.name())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.name())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $var:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $var ),+
        }

        impl $name {
            /// The name it travels as.
            pub fn name(&self) -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed(self.as_str())
            }

            /// The name it travels as, borrowed for ever.
            pub const fn as_str(&self) -> &'static str {
                match self {
                    $( Self::$var => $text ),+
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::events::named::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok(Self::$var), )+
                    _ => Err($crate::events::named::UnknownName { what: $what, got: s.to_owned() }),
                }
            }
        }

        named_enum!(@common $name, $what);
    };
    (
        $(#[$meta:meta])*
        pub enum $name:ident ($what:literal, numeric) {
            $( $(#[$vmeta:meta])* $var:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $var, )+
            /// A raw value this build has no name for, carried as its number.
            Other(u16),
        }

        impl $name {
            /// The name it travels as (the number, for [`Self::Other`]).
            pub fn name(&self) -> std::borrow::Cow<'static, str> {
                match self {
                    $( Self::$var => std::borrow::Cow::Borrowed($text), )+
                    Self::Other(n) => std::borrow::Cow::Owned(n.to_string()),
                }
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::events::named::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $( $text => Ok(Self::$var), )+
                    _ => s.parse().map(Self::Other).map_err(|_| {
                        $crate::events::named::UnknownName { what: $what, got: s.to_owned() }
                    }),
                }
            }
        }

        named_enum!(@common $name, $what);
    };
}

pub(crate) use named_enum;

#[cfg(test)]
mod tests {
    named_enum! {
        /// A test enum.
        pub enum Colour ("colour", numeric) {
            /// Red.
            Red = "red",
            /// Light blue.
            LightBlue = "light-blue",
        }
    }

    named_enum! {
        /// A strict test enum.
        pub enum Size ("size") {
            /// Small.
            Small = "small",
        }
    }

    #[test]
    fn names_round_trip_and_unknown_numbers_travel_as_numbers() {
        for c in [Colour::Red, Colour::LightBlue, Colour::Other(17)] {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(serde_json::from_str::<Colour>(&json).unwrap(), c);
        }
        assert_eq!(serde_json::to_string(&Colour::Other(17)).unwrap(), "\"17\"");
        assert_eq!(Colour::LightBlue.to_string(), "light-blue");
        let err = "green".parse::<Colour>().unwrap_err();
        assert_eq!(err.to_string(), "unknown colour \"green\"");
        assert!("7".parse::<Size>().is_err(), "strict enums take names only");
        assert_eq!(Size::Small.as_str(), "small");
    }
}
