//! The emulator's "cluster": a catalog of databases and tables, the rows ingested into
//! them, their `ingest-by:` tags, and the outcome of every message.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::outcome::{Failure, IngestionOutcome};

/// Databases and their tables: `{"db": ["Table1", "Table2"]}`. Names are case-sensitive,
/// as in Kusto.
pub type Catalog = BTreeMap<String, Vec<String>>;

#[derive(Debug, Default)]
struct TableData {
    rows: Vec<Value>,
    /// `ingest-by:` tag values of the ingestions so far.
    ingest_by: BTreeSet<String>,
}

/// What committing rows did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Commit {
    Appended(u64),
    /// `ingestIfNotExists` named this tag, which the table already has.
    Skipped(String),
}

#[derive(Debug, Default)]
pub(crate) struct Store {
    /// `None`: any database and table is accepted, tables appear on first ingestion.
    catalog: Option<Catalog>,
    tables: BTreeMap<(String, String), TableData>,
    outcomes: Vec<IngestionOutcome>,
}

impl Store {
    pub(crate) fn new(catalog: Option<Catalog>) -> Self {
        let mut store = Store::default();
        store.set_catalog(catalog);
        store
    }

    /// Replaces the catalog: tables it lists keep their rows (new ones start empty), tables
    /// it no longer lists are dropped with their rows. `None` accepts everything again.
    pub(crate) fn set_catalog(&mut self, catalog: Option<Catalog>) {
        if let Some(c) = &catalog {
            let listed: BTreeSet<(String, String)> = c
                .iter()
                .flat_map(|(db, tables)| tables.iter().map(|t| (db.clone(), t.clone())))
                .collect();
            self.tables.retain(|k, _| listed.contains(k));
            for key in listed {
                self.tables.entry(key).or_default();
            }
        }
        self.catalog = catalog;
    }

    pub(crate) fn catalog(&self) -> Option<&Catalog> {
        self.catalog.as_ref()
    }

    /// Whether the catalog has this database and table (DOC `error-codes.md`:
    /// `BadRequest_DatabaseNotExist`, `BadRequest_TableNotExist`, both permanent).
    pub(crate) fn check_target(&self, db: &str, table: &str) -> Result<(), Failure> {
        let Some(catalog) = &self.catalog else {
            return Ok(());
        };
        let Some(tables) = catalog.get(db) else {
            return Err(Failure::permanent(
                "BadRequest_DatabaseNotExist",
                format!("Database '{db}' was not found."),
            ));
        };
        if tables.iter().any(|t| t == table) {
            Ok(())
        } else {
            Err(Failure::permanent(
                "BadRequest_TableNotExist",
                format!("Table '{table}' was not found in database '{db}'."),
            ))
        }
    }

    /// The first of `wanted` that an earlier ingestion into the table tagged `ingest-by:`.
    pub(crate) fn ingested_tag(&self, db: &str, table: &str, wanted: &[String]) -> Option<String> {
        let data = self.tables.get(&(db.to_string(), table.to_string()))?;
        wanted.iter().find(|t| data.ingest_by.contains(*t)).cloned()
    }

    /// Appends rows in one step with the target and `ingestIfNotExists` checks, so
    /// concurrent ingestions and catalog changes cannot slip in between.
    pub(crate) fn commit(
        &mut self,
        db: &str,
        table: &str,
        rows: Vec<Value>,
        ingest_by: Vec<String>,
        if_not_exists: &[String],
    ) -> Result<Commit, Failure> {
        self.check_target(db, table)?;
        if let Some(tag) = self.ingested_tag(db, table, if_not_exists) {
            return Ok(Commit::Skipped(tag));
        }
        let data = self
            .tables
            .entry((db.to_string(), table.to_string()))
            .or_default();
        let n = rows.len() as u64;
        data.rows.extend(rows);
        data.ingest_by.extend(ingest_by);
        Ok(Commit::Appended(n))
    }

    /// Rows of a table; `None` when the table does not exist.
    pub(crate) fn row_count(&self, db: &str, table: &str) -> Option<u64> {
        self.tables
            .get(&(db.to_string(), table.to_string()))
            .map(|d| d.rows.len() as u64)
    }

    pub(crate) fn rows(&self, db: &str, table: &str) -> Vec<Value> {
        self.tables
            .get(&(db.to_string(), table.to_string()))
            .map(|d| d.rows.clone())
            .unwrap_or_default()
    }

    /// `{"db.table": rows}` for every table.
    pub(crate) fn counts(&self) -> BTreeMap<String, u64> {
        self.tables
            .iter()
            .map(|((db, t), d)| (format!("{db}.{t}"), d.rows.len() as u64))
            .collect()
    }

    pub(crate) fn record(&mut self, outcome: IngestionOutcome) {
        self.outcomes.push(outcome);
    }

    pub(crate) fn outcomes(&self) -> &[IngestionOutcome] {
        &self.outcomes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_checks_and_ingest_by_tags() {
        let mut s = Store::new(Some(Catalog::from([("db".into(), vec!["T".into()])])));
        assert_eq!(s.row_count("db", "T"), Some(0));
        assert_eq!(
            s.check_target("nodb", "T").unwrap_err().code,
            "BadRequest_DatabaseNotExist"
        );
        assert_eq!(
            s.check_target("db", "U").unwrap_err().code,
            "BadRequest_TableNotExist"
        );
        let rows = vec![Value::Null, Value::Null];
        let c = s.commit("db", "T", rows.clone(), vec!["b1".into()], &[]);
        assert_eq!(c, Ok(Commit::Appended(2)));
        let c = s.commit("db", "T", rows.clone(), vec![], &["b1".into()]);
        assert_eq!(c, Ok(Commit::Skipped("b1".into())));
        assert_eq!(s.counts().get("db.T"), Some(&2));
        s.set_catalog(None);
        assert_eq!(
            s.commit("x", "y", rows, vec![], &[]),
            Ok(Commit::Appended(2))
        );
        s.set_catalog(Some(Catalog::new()));
        assert!(s.counts().is_empty());
    }
}
