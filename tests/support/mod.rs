pub mod store_conformance;
