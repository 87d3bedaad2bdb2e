//! One integration-test binary; a module per part. Tests that need root or a system
//! package check for it and print a loud `SKIPPED:` line when it is missing.

mod admin;
mod cluster;
mod dovecot_hooks;
mod e2e;
mod fastcontainer;
mod fastcontainer_dovecot;
mod fastcontainer_manager;
mod host;
mod lmtp;
mod lookup;
mod milter_libmilter;
mod milter_miltertest;
mod milter_postfix;
mod milter_service;
mod plugins_examples;
mod policy;
mod proxy;
mod registry;
mod registry_etcd;
mod robustness;
mod serve;
mod support;
