//! Which database a `--database-url` names: the one rule the flags' checks (a
//! cluster needs PostgreSQL) and the store (which driver to open) both follow.

/// The database a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `postgres://…` or `postgresql://…`.
    Postgres,
    /// `sqlite:…`.
    Sqlite,
}

impl Dialect {
    /// The dialect of `database_url`, by its scheme; `None` for any other.
    pub fn of(database_url: &str) -> Option<Dialect> {
        if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
            Some(Dialect::Postgres)
        } else if database_url.starts_with("sqlite:") {
            Some(Dialect::Sqlite)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Dialect;

    #[test]
    fn the_scheme_names_the_dialect() {
        assert_eq!(Dialect::of("postgres://u@h/db"), Some(Dialect::Postgres));
        assert_eq!(Dialect::of("postgresql://u@h/db"), Some(Dialect::Postgres));
        assert_eq!(Dialect::of("sqlite://chat.db"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of("sqlite::memory:"), Some(Dialect::Sqlite));
        assert_eq!(Dialect::of("mysql://h/db"), None);
        assert_eq!(Dialect::of("postgres:/nope"), None);
    }
}
