//! Pages of listings.

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size; larger requests are lowered to it.
pub const MAX_PAGE_SIZE: u32 = 100;

/// One page request: at most `size` items after the key `after` (exclusive).
#[derive(Clone, Debug)]
pub struct PageRequest {
    pub size: u32,
    pub after: Option<String>,
}

impl PageRequest {
    /// A page of `requested` items (0: the default; above the maximum: the maximum).
    pub fn new(requested: u32, after: Option<String>) -> Self {
        let size = match requested {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        PageRequest { size, after }
    }
}

/// One page of results; `next_after` is the key to continue after, if there is more.
#[derive(Clone, Debug)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_after: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `size + 1` fetched items: the extra one only says
    /// that another page exists.
    pub fn from_overfetch(mut items: Vec<T>, size: u32, key: impl Fn(&T) -> String) -> Self {
        let more = items.len() > size as usize;
        items.truncate(size as usize);
        let next_after = if more { items.last().map(key) } else { None };
        Page { items, next_after }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_default_and_cap() {
        assert_eq!(PageRequest::new(0, None).size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::new(7, None).size, 7);
        assert_eq!(PageRequest::new(1000, None).size, MAX_PAGE_SIZE);
    }
}
