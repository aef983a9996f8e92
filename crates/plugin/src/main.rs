//! The myshoes provider plugin. Not built yet: a later issue fills in the go-plugin server.

fn main() {
    eprintln!("shoes-vz-plugin is not implemented yet; see the project's open issues");
    std::process::exit(1);
}
