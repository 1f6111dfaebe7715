//! The one place SQL meets a driver. A statement is written once, with `$N` placeholders, and
//! runs on either backend: [`Sql`] carries its text and its bound [`Value`]s, and turns them into
//! the native SQLite or PostgreSQL arguments only when it runs, on an [`Ex`] (a connection, a
//! pool or a transaction of either backend). Rows decode natively through `FromRow`, so a row
//! struct works on both backends as long as its columns have portable types (TEXT, BIGINT,
//! INTEGER, BOOLEAN).
//!
//! Why not `sqlx::Any`: Any decodes every column into its own value type first and refuses
//! SQLite's BOOLEAN columns; why not code generic over `sqlx::Database`: every generic function
//! would repeat a dozen trait bounds that Rust cannot imply. A closed enum of two backends is
//! simpler than both.

use std::borrow::Cow;

use sqlx::postgres::{PgArguments, PgConnection, PgPool, PgRow};
use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Arguments, AssertSqlSafe, Encode, Executor, FromRow, Postgres, Sqlite, Type};

use super::StoreError;

/// A value bound to a `$N` placeholder: the portable column types, each nullable.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value<'a> {
    /// TEXT.
    Text(Option<Cow<'a, str>>),
    /// BIGINT (ids of time: Unix microseconds; counts).
    BigInt(Option<i64>),
    /// INTEGER.
    Int(Option<i32>),
    /// BOOLEAN.
    Bool(Option<bool>),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::Text(Some(Cow::Borrowed(value)))
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(value: &'a String) -> Self {
        Value::Text(Some(Cow::Borrowed(value)))
    }
}

impl From<String> for Value<'_> {
    fn from(value: String) -> Self {
        Value::Text(Some(Cow::Owned(value)))
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Value::Text(value.map(Cow::Borrowed))
    }
}

impl<'a> From<&'a Option<String>> for Value<'a> {
    fn from(value: &'a Option<String>) -> Self {
        Value::Text(value.as_deref().map(Cow::Borrowed))
    }
}

impl From<Option<String>> for Value<'_> {
    fn from(value: Option<String>) -> Self {
        Value::Text(value.map(Cow::Owned))
    }
}

impl From<i64> for Value<'_> {
    fn from(value: i64) -> Self {
        Value::BigInt(Some(value))
    }
}

impl From<Option<i64>> for Value<'_> {
    fn from(value: Option<i64>) -> Self {
        Value::BigInt(value)
    }
}

impl From<i32> for Value<'_> {
    fn from(value: i32) -> Self {
        Value::Int(Some(value))
    }
}

impl From<Option<i32>> for Value<'_> {
    fn from(value: Option<i32>) -> Self {
        Value::Int(value)
    }
}

impl From<bool> for Value<'_> {
    fn from(value: bool) -> Self {
        Value::Bool(Some(value))
    }
}

/// The order of a keyset-paged list.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Order {
    /// Smallest key first (names).
    Ascending,
    /// Largest key first: prefixed ids sort by creation time, so newest first.
    Descending,
}

/// A row type that decodes from either backend.
pub(crate) trait Rows:
    for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{
}

impl<T> Rows for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}

/// Where a statement runs: a connection, a pool or an open transaction of either backend.
pub(crate) enum Ex<'c> {
    /// An SQLite transaction's connection with the writes it holds back ([`Sql::defer`]): they
    /// run first, in the same call.
    SqliteHeld(&'c mut SqliteConnection, &'c mut Held),
    /// An SQLite pool: a connection is taken for the statement.
    SqlitePool(&'c SqlitePool),
    /// A PostgreSQL connection (or the connection of a transaction).
    Postgres(&'c mut PgConnection),
    /// A PostgreSQL pool.
    PgPool(&'c PgPool),
}

/// An open write transaction on either backend; dropped without `commit`, it rolls back.
pub(crate) enum Tx {
    /// SQLite, with the writes it holds back.
    Sqlite(sqlx::Transaction<'static, Sqlite>, Held),
    /// PostgreSQL.
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    /// Commits the transaction (after the writes it held back).
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        if let Tx::Sqlite(tx, held) = &mut self
            && !held.is_empty()
        {
            let (text, args) = held.take()?;
            sqlx::query_with(AssertSqlSafe(text), args).execute(&mut **tx).await?;
        }
        match self {
            Tx::Sqlite(tx, _) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }
}

impl<'c> From<&'c mut Tx> for Ex<'c> {
    fn from(tx: &'c mut Tx) -> Self {
        match tx {
            Tx::Sqlite(tx, held) => Ex::SqliteHeld(tx, held),
            Tx::Postgres(tx) => Ex::Postgres(tx),
        }
    }
}

/// Writes an SQLite transaction holds back ([`Sql::defer`]) until its next statement or its
/// commit, which carries them to the database thread in the same call. On SQLite every
/// statement is a hop to that thread and back, and a dispatch cycle's fixed cost is its hops,
/// not its rows; statements run in order on the one connection, so holding a write back changes
/// nothing that any later statement of the transaction reads. Each held statement is written with
/// positional `?` placeholders, its arguments in their order, so the next statement's follow on.
#[derive(Debug, Default)]
pub(crate) struct Held {
    text: String,
    args: Vec<Value<'static>>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Appends a statement.
    fn push(&mut self, statement: Sql<'_>) {
        let (text, args) = statement.positional();
        self.text.push_str(&text);
        self.text.push_str(";\n");
        self.args.extend(args.into_iter().map(Value::into_owned));
    }

    /// The held statements as one call, and nothing held any more.
    fn take(&mut self) -> Result<(String, SqliteArguments), sqlx::Error> {
        let text = std::mem::take(&mut self.text);
        let args = std::mem::take(&mut self.args);
        let held = Sql { text: Cow::Owned(String::new()), args, pushed: Vec::new() };
        Ok((text, held.arguments()?))
    }

    /// `statement` after the held ones, as one call, and nothing held any more.
    fn before(&mut self, statement: Sql<'_>) -> Result<(String, SqliteArguments), sqlx::Error> {
        if self.is_empty() {
            let args = statement.arguments()?;
            return Ok((statement.render(true).into_owned(), args));
        }
        self.push(statement);
        self.take()
    }
}

/// A statement and its arguments. Written with a `&'static str` for a fixed statement (cached
/// as a prepared statement by the driver), or built with [`Sql::push`] and friends for a
/// multi-row one.
#[derive(Debug)]
pub(crate) struct Sql<'a> {
    text: Cow<'static, str>,
    args: Vec<Value<'a>>,
    /// Placeholders added by [`Sql::push_bind`]: (byte offset in `text`, argument number). They
    /// are written when the statement runs, as each backend binds fastest: `$N` on PostgreSQL,
    /// `?` on SQLite, which looks a named parameter up by a linear scan (so 12,000 `$N` in one
    /// multi-row insert cost O(n²)) but binds `?` by position.
    pushed: Vec<(usize, usize)>,
}

/// A fixed statement.
pub(crate) fn sql<'a>(text: &'static str) -> Sql<'a> {
    Sql { text: Cow::Borrowed(text), args: Vec::new(), pushed: Vec::new() }
}

impl<'a> Sql<'a> {
    /// A statement built at run time, starting with `text`.
    pub(crate) fn build(text: &str) -> Sql<'a> {
        Sql { text: Cow::Owned(text.to_owned()), args: Vec::new(), pushed: Vec::new() }
    }

    /// The start of a list read of one tenant's rows: `select <columns> from <table> where
    /// tenant_id = $1`, for [`Sql::and_if`] filters and [`Sql::page_on`] to follow.
    pub(crate) fn tenant_list(columns: &str, table: &str, tenant_id: &'a str) -> Sql<'a> {
        Sql::build(&format!("select {columns} from {table} where tenant_id = $1")).bind(tenant_id)
    }

    /// Binds the next `$N` placeholder.
    pub(crate) fn bind(mut self, value: impl Into<Value<'a>>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Appends ` and <condition>`: a fixed filter of a list read.
    pub(crate) fn and(mut self, condition: &str) -> Self {
        self.push(" and ").push(condition);
        self
    }

    /// Appends ` and <condition><placeholder>` when `value` is set, as a list's optional filter
    /// (`condition` ends where the value goes: `"created_at >= "`); nothing when it is not, so
    /// the planner sees only the filters in use.
    pub(crate) fn and_if<V: Into<Value<'a>>>(mut self, condition: &str, value: Option<V>) -> Self {
        if let Some(value) = value {
            self.push(" and ").push(condition).push_bind(value);
        }
        self
    }

    /// Appends a list's creation-time filter.
    pub(crate) fn created(self, created: &super::Created) -> Self {
        self.and_if("created_at >= ", created.since).and_if("created_at < ", created.until)
    }

    /// Ends a list read one keyset page at a time: the rows past the page's cursor on `key`, in
    /// `order` of it, at most `page.limit` of them. Every list of the API pages this way.
    pub(crate) fn page_on(self, key: &str, order: Order, page: &'a super::PageQuery) -> Self {
        let (past, direction) = match order {
            Order::Ascending => (" > ", ""),
            Order::Descending => (" < ", " desc"),
        };
        let mut paged = self.and_if(&format!("{key}{past}"), page.after.as_deref());
        paged.push(&format!(" order by {key}{direction} limit ")).push_bind(page.limit);
        paged
    }

    /// Appends text.
    pub(crate) fn push(&mut self, text: &str) -> &mut Self {
        self.text.to_mut().push_str(text);
        self
    }

    /// Appends a placeholder for `value`.
    pub(crate) fn push_bind(&mut self, value: impl Into<Value<'a>>) -> &mut Self {
        self.args.push(value.into());
        self.pushed.push((self.text.len(), self.args.len()));
        self
    }

    /// The statement's text with its pushed placeholders written: `?` (by position) when every
    /// argument was pushed in order and `positional` holds, else `$N`.
    fn render(&self, positional: bool) -> Cow<'static, str> {
        if self.pushed.is_empty() {
            return self.text.clone();
        }
        let positional = positional && self.pushed.len() == self.args.len();
        let mut text = String::with_capacity(self.text.len() + self.pushed.len() * 6);
        let mut from = 0;
        for (offset, number) in &self.pushed {
            text.push_str(&self.text[from..*offset]);
            if positional {
                text.push('?');
            } else {
                text.push('$');
                text.push_str(&number.to_string());
            }
            from = *offset;
        }
        text.push_str(&self.text[from..]);
        Cow::Owned(text)
    }

    /// Appends `value`'s placeholder cast to `sql_type` (PostgreSQL types the columns of a
    /// `values` list from their first row, and a NULL there has no type).
    pub(crate) fn push_cast(&mut self, value: impl Into<Value<'a>>, sql_type: &str) -> &mut Self {
        self.push("cast(").push_bind(value).push(" as ").push(sql_type).push(")")
    }

    /// Appends `(…), (…)`: one parenthesised tuple per item, written by `row`.
    pub(crate) fn push_tuples<T>(
        &mut self,
        items: impl IntoIterator<Item = T>,
        mut row: impl FnMut(&mut Tuple<'_, 'a>, T),
    ) -> &mut Self {
        for (index, item) in items.into_iter().enumerate() {
            self.push(if index == 0 { "(" } else { ", (" });
            row(&mut Tuple { sql: self, first: true }, item);
            self.push(")");
        }
        self
    }

    /// Appends `$a, $b, …` for a list of values (an `in (…)` list).
    pub(crate) fn push_list<V: Into<Value<'a>>>(&mut self, values: impl IntoIterator<Item = V>) -> &mut Self {
        for (index, value) in values.into_iter().enumerate() {
            if index > 0 {
                self.push(", ");
            }
            self.push_bind(value);
        }
        self
    }

    /// Holds a write back until the transaction's next statement or its commit, to run in the
    /// same call on SQLite (see [`Held`]); runs it at once on PostgreSQL. For writes whose count
    /// of changed rows nothing reads, without `returning`.
    pub(crate) async fn defer(self, tx: &mut Tx) -> Result<(), StoreError> {
        match tx {
            Tx::Sqlite(_, held) => {
                held.push(self);
                Ok(())
            }
            Tx::Postgres(_) => self.run(tx).await,
        }
    }

    /// The statement with positional `?` placeholders only, and its arguments in their order (a
    /// `$N` used twice is bound twice), so that it can follow others in one SQLite call.
    fn positional(self) -> (String, Vec<Value<'a>>) {
        let text = self.render(false);
        let mut args = Vec::with_capacity(self.args.len());
        let mut out = String::with_capacity(text.len());
        let mut chars = text.char_indices().peekable();
        let mut quoted = false;
        while let Some((at, c)) = chars.next() {
            if c == '\'' {
                quoted = !quoted;
            }
            let numbered = c == '$' && !quoted && chars.peek().is_some_and(|(_, next)| next.is_ascii_digit());
            if !numbered {
                out.push(c);
                continue;
            }
            let mut end = at + 1;
            while let Some((i, d)) = chars.peek().copied()
                && d.is_ascii_digit()
            {
                end = i + 1;
                chars.next();
            }
            let number: usize = text[at + 1..end].parse().unwrap_or(0);
            out.push('?');
            args.push(self.args.get(number.wrapping_sub(1)).cloned().unwrap_or(Value::Text(None)));
        }
        (out, args)
    }

    /// Runs the statement; returns how many rows it changed.
    pub(crate) async fn execute<'c>(self, on: impl Into<Ex<'c>>) -> Result<u64, StoreError> {
        let done = match on.into() {
            Ex::SqliteHeld(conn, held) => {
                // The count must be this statement's alone: the held writes run first, apart.
                if !held.is_empty() {
                    let (text, args) = held.take()?;
                    sqlx::query_with(AssertSqlSafe(text), args).execute(&mut *conn).await?;
                }
                sqlite_execute(self, conn).await?
            }
            Ex::SqlitePool(pool) => sqlite_execute(self, pool).await?,
            Ex::Postgres(conn) => pg_execute(self, conn).await?,
            Ex::PgPool(pool) => pg_execute(self, pool).await?,
        };
        Ok(done)
    }

    /// Runs the statement, whatever it changed.
    pub(crate) async fn run<'c>(self, on: impl Into<Ex<'c>>) -> Result<(), StoreError> {
        self.execute(on).await.map(drop)
    }

    /// Runs a statement that must change a row; `NotFound` when it changed none.
    pub(crate) async fn execute_found<'c>(self, on: impl Into<Ex<'c>>) -> Result<(), StoreError> {
        match self.execute(on).await? {
            0 => Err(StoreError::NotFound),
            _ => Ok(()),
        }
    }

    /// Runs the statement and decodes every row.
    pub(crate) async fn fetch_all<'c, T: Rows>(self, on: impl Into<Ex<'c>>) -> Result<Vec<T>, StoreError> {
        let rows = match on.into() {
            Ex::SqliteHeld(conn, held) => {
                let (text, args) = held.before(self)?;
                sqlx::query_as_with(AssertSqlSafe(text), args).fetch_all(conn).await?
            }
            Ex::SqlitePool(pool) => sqlite_fetch(self, pool).await?,
            Ex::Postgres(conn) => pg_fetch(self, conn).await?,
            Ex::PgPool(pool) => pg_fetch(self, pool).await?,
        };
        Ok(rows)
    }

    /// Runs a statement that returns at most one row.
    pub(crate) async fn fetch_optional<'c, T: Rows>(
        self,
        on: impl Into<Ex<'c>>,
    ) -> Result<Option<T>, StoreError> {
        Ok(self.fetch_all(on).await?.into_iter().next())
    }

    /// Runs a statement that returns exactly one row; `NotFound` when it returns none.
    pub(crate) async fn fetch_one<'c, T: Rows>(self, on: impl Into<Ex<'c>>) -> Result<T, StoreError> {
        self.fetch_optional(on).await?.ok_or(StoreError::NotFound)
    }

    /// The arguments in the driver's own form.
    fn arguments<A>(&self) -> Result<A, sqlx::Error>
    where
        A: Arguments,
        for<'q> Option<&'q str>: Encode<'q, A::Database> + Type<A::Database>,
        for<'q> Option<i64>: Encode<'q, A::Database> + Type<A::Database>,
        for<'q> Option<i32>: Encode<'q, A::Database> + Type<A::Database>,
        for<'q> Option<bool>: Encode<'q, A::Database> + Type<A::Database>,
    {
        let mut args = A::default();
        for value in &self.args {
            match value {
                Value::Text(text) => args.add(text.as_deref()),
                Value::BigInt(n) => args.add(*n),
                Value::Int(n) => args.add(*n),
                Value::Bool(b) => args.add(*b),
            }
            .map_err(sqlx::Error::Encode)?;
        }
        Ok(args)
    }
}

impl Value<'_> {
    /// The value, owning its text.
    fn into_owned(self) -> Value<'static> {
        match self {
            Value::Text(text) => Value::Text(text.map(|text| Cow::Owned(text.into_owned()))),
            Value::BigInt(n) => Value::BigInt(n),
            Value::Int(n) => Value::Int(n),
            Value::Bool(b) => Value::Bool(b),
        }
    }
}

/// One tuple of [`Sql::push_tuples`]: its values, comma-separated.
pub(crate) struct Tuple<'s, 'a> {
    sql: &'s mut Sql<'a>,
    first: bool,
}

impl<'a> Tuple<'_, 'a> {
    fn separate(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.sql.push(", ");
        }
    }

    /// The next value.
    pub(crate) fn bind(&mut self, value: impl Into<Value<'a>>) -> &mut Self {
        self.separate();
        self.sql.push_bind(value);
        self
    }

    /// The next value, cast to `sql_type` (see [`Sql::push_cast`]).
    pub(crate) fn cast(&mut self, value: impl Into<Value<'a>>, sql_type: &str) -> &mut Self {
        self.separate();
        self.sql.push_cast(value, sql_type);
        self
    }
}

async fn sqlite_execute<'c>(
    statement: Sql<'_>,
    on: impl Executor<'c, Database = Sqlite>,
) -> Result<u64, sqlx::Error> {
    let args = statement.arguments::<SqliteArguments>()?;
    Ok(sqlx::query_with(AssertSqlSafe(statement.render(true)), args).execute(on).await?.rows_affected())
}

async fn sqlite_fetch<'c, T: Rows>(
    statement: Sql<'_>,
    on: impl Executor<'c, Database = Sqlite>,
) -> Result<Vec<T>, sqlx::Error> {
    let args = statement.arguments::<SqliteArguments>()?;
    sqlx::query_as_with(AssertSqlSafe(statement.render(true)), args).fetch_all(on).await
}

async fn pg_execute<'c>(
    statement: Sql<'_>,
    on: impl Executor<'c, Database = Postgres>,
) -> Result<u64, sqlx::Error> {
    let args = statement.arguments::<PgArguments>()?;
    Ok(sqlx::query_with(AssertSqlSafe(statement.render(false)), args).execute(on).await?.rows_affected())
}

async fn pg_fetch<'c, T: Rows>(
    statement: Sql<'_>,
    on: impl Executor<'c, Database = Postgres>,
) -> Result<Vec<T>, sqlx::Error> {
    let args = statement.arguments::<PgArguments>()?;
    sqlx::query_as_with(AssertSqlSafe(statement.render(false)), args).fetch_all(on).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_binding_order() {
        let mut statement = Sql::build("insert into t (a, b) values ");
        statement.push_tuples([(1i64, "x"), (2, "y")], |tuple, (a, b)| {
            tuple.cast(a, "bigint").bind(b);
        });
        statement.push(" returning a");
        assert_eq!(
            statement.render(false),
            "insert into t (a, b) values (cast($1 as bigint), $2), (cast($3 as bigint), $4) returning a"
        );
        assert_eq!(
            statement.render(true),
            "insert into t (a, b) values (cast(? as bigint), ?), (cast(? as bigint), ?) returning a"
        );
        assert_eq!(statement.args.len(), 4);
        assert_eq!(statement.args[3], Value::Text(Some(Cow::Borrowed("y"))));
    }

    #[test]
    fn lists_are_comma_separated_tuples() {
        let mut statement = Sql::build("delete from t where id in (");
        statement.push_list(["a", "b", "c"]).push(")");
        assert_eq!(statement.render(false), "delete from t where id in ($1, $2, $3)");
    }

    #[test]
    fn placeholders_stay_numbered_when_fixed_ones_come_first() {
        let mut statement = Sql::build("update t set a = $1 where b in (").bind(7i64);
        statement.push_list(["x", "y"]).push(")");
        assert_eq!(statement.render(true), "update t set a = $1 where b in ($2, $3)");
    }
}

#[cfg(test)]
mod sqlite_tests {
    use super::*;

    /// An in-memory database with one table `t (a bigint, b text)`.
    async fn table_t() -> SqlitePool {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .expect("an in-memory database");
        sql("create table t (a bigint, b text)").execute(Ex::SqlitePool(&pool)).await.expect("created");
        pool
    }

    /// On SQLite, pushed placeholders are written as `?` (bound by position); fixed ones stay `$N`.
    #[tokio::test]
    async fn a_built_multi_row_statement_runs_on_sqlite() {
        let pool = table_t().await;
        let on = || Ex::SqlitePool(&pool);
        let mut insert = Sql::build("insert into t (a, b) values ");
        insert.push_tuples([(1i64, "x"), (2, "y")], |tuple, (a, b)| {
            tuple.cast(a, "bigint").bind(b);
        });
        assert_eq!(insert.execute(on()).await.expect("inserted"), 2);
        let mut select = Sql::build("select a, b from t where a >= $1 and b in (").bind(0i64);
        select.push_list(["y", "z"]).push(")");
        let rows: Vec<(i64, String)> = select.fetch_all(on()).await.expect("selected");
        assert_eq!(rows, vec![(2, "y".to_owned())]);
    }

    /// Writes held back on a transaction run, in order, with the next statement: a read sees
    /// them, a count is the statement's own, and the commit runs what is still held.
    #[tokio::test]
    async fn held_writes_run_in_order_with_the_next_statement() {
        let pool = table_t().await;
        let mut tx = Tx::Sqlite(pool.begin().await.expect("begun"), Held::default());
        let mut insert = Sql::build("insert into t (a, b) values ");
        insert.push_tuples([(1i64, "x"), (2, "y")], |tuple, (a, b)| {
            tuple.bind(a).bind(b);
        });
        insert.defer(&mut tx).await.expect("held");
        // `$1` twice and a `$1` inside a literal, which is text.
        sql("update t set b = b || '$1' || $2 where a = $1 or a = $1 + 10")
            .bind(2i64)
            .bind("!")
            .defer(&mut tx)
            .await
            .expect("held");
        let rows: Vec<(i64, String)> = sql("select a, b from t where a >= $1 order by a")
            .bind(1i64)
            .fetch_all(&mut tx)
            .await
            .expect("read");
        assert_eq!(rows, vec![(1, "x".to_owned()), (2, "y$1!".to_owned())]);
        sql("insert into t (a, b) values ($1, $2)").bind(3i64).bind("z").defer(&mut tx).await.expect("held");
        let changed =
            sql("update t set b = 'w' where a = $1").bind(1i64).execute(&mut tx).await.expect("ran");
        assert_eq!(changed, 1, "the count is the statement's own, not the held writes'");
        sql("delete from t where a = $1").bind(1i64).defer(&mut tx).await.expect("held");
        tx.commit().await.expect("committed");
        let rows: Vec<(i64,)> =
            sql("select a from t order by a").fetch_all(Ex::SqlitePool(&pool)).await.expect("read");
        assert_eq!(rows, vec![(2,), (3,)]);
    }
}
