//! The statements that every applied entry runs, with fixed SQL texts that each connection
//! prepares once and then reuses.
//!
//! diesel prepares every `UPDATE` and every `sql_query` anew on each run (it cannot tell that
//! their text is always the same), and parsing and planning them was a fifth of the time a
//! node spent applying new products. A statement here is a type with a static query id: run on
//! the backend's own connection (`on_backend!`), the statement cache finds it by that id,
//! without even building its SQL.

use diesel::backend::Backend;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{BigInt, Double, HasSqlType, Integer, Nullable, Text};
use diesel::QueryResult;

use super::models::{Meta, Product};

/// Declares a statement: its SQL text with a bind parameter after each piece but the last
/// (the backend writes its own placeholder: `?` or `$n`), and the type of each parameter.
macro_rules! fixed_statement {
    (
        $(#[$doc:meta])*
        $name:ident<$lt:lifetime>, id $id:ident {
            $head:literal
            $( , $field:ident : $ty:ty as $sql:ty , $tail:literal )*
        }
    ) => {
        $(#[$doc])*
        pub struct $name<$lt> {
            $( pub $field: $ty, )*
            pub _borrow: std::marker::PhantomData<&$lt ()>,
        }

        /// The statement's identity in the statement cache.
        pub struct $id;

        impl<$lt> QueryId for $name<$lt> {
            type QueryId = $id;
            const HAS_STATIC_QUERY_ID: bool = true;
        }

        impl<$lt, DB> QueryFragment<DB> for $name<$lt>
        where
            DB: Backend $( + HasSqlType<$sql> )*,
            $( $ty: ToSql<$sql, DB>, )*
        {
            fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, DB>) -> QueryResult<()> {
                out.push_sql($head);
                $(
                    out.push_bind_param::<$sql, $ty>(&self.$field)?;
                    out.push_sql($tail);
                )*
                Ok(())
            }
        }

        impl<$lt, Conn> diesel::RunQueryDsl<Conn> for $name<$lt> {}
    };
}

fixed_statement! {
    /// Takes the meta row's lock (SQLite: the database's write lock) for the transaction.
    LockMeta<'a>, id LockMetaId {
        "UPDATE meta SET last_index = last_index WHERE id = 1"
    }
}

fixed_statement! {
    /// Writes the meta row: the last applied entry and the next ids.
    WriteMeta<'a>, id WriteMetaId {
        "UPDATE meta SET last_index = ",
        last_index: i64 as BigInt, ", last_term = ",
        last_term: i64 as BigInt, ", next_product_id = ",
        next_product_id: i64 as BigInt, ", next_user_id = ",
        next_user_id: i64 as BigInt, ", next_task_id = ",
        next_task_id: i64 as BigInt, " WHERE id = 1"
    }
}

fixed_statement! {
    /// Inserts one product row.
    InsertProduct<'a>, id InsertProductId {
        "INSERT INTO products (id, title, price, currency, converted_price, converted_currency, \
         availability, rating, link, scraped_at, created_at, updated_at) VALUES (",
        id: i64 as BigInt, ", ",
        title: &'a str as Text, ", ",
        price: f64 as Double, ", ",
        currency: &'a str as Text, ", ",
        converted_price: Option<f64> as Nullable<Double>, ", ",
        converted_currency: Option<&'a str> as Nullable<Text>, ", ",
        availability: Option<&'a str> as Nullable<Text>, ", ",
        rating: Option<i32> as Nullable<Integer>, ", ",
        link: Option<&'a str> as Nullable<Text>, ", ",
        scraped_at: Option<&'a str> as Nullable<Text>, ", ",
        created_at: &'a str as Text, ", ",
        updated_at: &'a str as Text, ")"
    }
}

fixed_statement! {
    /// Keeps what applying one entry answered.
    InsertOutcome<'a>, id InsertOutcomeId {
        "INSERT INTO apply_outcomes (log_index, outcome) VALUES (",
        log_index: i64 as BigInt, ", ",
        outcome: &'a str as Text, ")"
    }
}

impl LockMeta<'_> {
    pub fn new() -> Self {
        LockMeta { _borrow: std::marker::PhantomData }
    }
}

impl WriteMeta<'_> {
    pub fn new(m: &Meta) -> Self {
        WriteMeta {
            last_index: m.last_index,
            last_term: m.last_term,
            next_product_id: m.next_product_id,
            next_user_id: m.next_user_id,
            next_task_id: m.next_task_id,
            _borrow: std::marker::PhantomData,
        }
    }
}

impl<'a> InsertProduct<'a> {
    pub fn new(row: &'a Product) -> Self {
        InsertProduct {
            id: row.id,
            title: &row.title,
            price: row.price,
            currency: &row.currency,
            converted_price: row.converted_price,
            converted_currency: row.converted_currency.as_deref(),
            availability: row.availability.as_deref(),
            rating: row.rating,
            link: row.link.as_deref(),
            scraped_at: row.scraped_at.as_deref(),
            created_at: &row.created_at,
            updated_at: &row.updated_at,
            _borrow: std::marker::PhantomData,
        }
    }
}

impl<'a> InsertOutcome<'a> {
    pub fn new(log_index: i64, outcome: &'a str) -> Self {
        InsertOutcome { log_index, outcome, _borrow: std::marker::PhantomData }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sqlite::Sqlite;

    fn product() -> Product {
        Product {
            id: 7,
            title: "Dune".into(),
            price: 9.5,
            currency: "GBP".into(),
            converted_price: None,
            converted_currency: None,
            availability: Some("In stock".into()),
            rating: Some(4),
            link: None,
            scraped_at: None,
            created_at: "2026-11-30T00:00:00Z".into(),
            updated_at: "2026-11-30T00:00:00Z".into(),
        }
    }

    #[test]
    fn statements_are_cached_by_their_static_id() {
        let row = product();
        let meta = Meta { last_index: 1, last_term: 1, next_product_id: 2, next_user_id: 1, next_task_id: 1 };
        let insert = InsertProduct::new(&row);
        assert!(QueryFragment::<Sqlite>::is_safe_to_cache_prepared(&insert, &Sqlite).unwrap());
        assert!(QueryFragment::<Sqlite>::is_safe_to_cache_prepared(&WriteMeta::new(&meta), &Sqlite).unwrap());
        assert!(QueryFragment::<Sqlite>::is_safe_to_cache_prepared(&LockMeta::new(), &Sqlite).unwrap());
        assert!(QueryFragment::<Sqlite>::is_safe_to_cache_prepared(&InsertOutcome::new(1, "{}"), &Sqlite).unwrap());
        assert_eq!(<InsertProduct as QueryId>::query_id(), Some(std::any::TypeId::of::<InsertProductId>()));
        assert_ne!(<WriteMeta as QueryId>::query_id(), <LockMeta as QueryId>::query_id());
    }

    #[test]
    fn each_parameter_has_its_placeholder() {
        let meta = Meta { last_index: 5, last_term: 2, next_product_id: 9, next_user_id: 3, next_task_id: 4 };
        let sql = diesel::debug_query::<Sqlite, _>(&WriteMeta::new(&meta)).to_string();
        assert_eq!(
            sql,
            "UPDATE meta SET last_index = ?, last_term = ?, next_product_id = ?, next_user_id = ?, \
             next_task_id = ? WHERE id = 1 -- binds: [5, 2, 9, 3, 4]"
        );
        let row = product();
        let sql = diesel::debug_query::<Sqlite, _>(&InsertProduct::new(&row)).to_string();
        assert!(sql.contains("VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"), "{sql}");
        assert!(sql.ends_with(
            r#"binds: [7, "Dune", 9.5, "GBP", None, None, Some("In stock"), Some(4), None, None, "2026-11-30T00:00:00Z", "2026-11-30T00:00:00Z"]"#
        ), "{sql}");
    }
}
