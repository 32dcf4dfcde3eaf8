//! What is generated from a RealtimeApp for its clients (README, "Clients"): the
//! [`catalog`] of every message, read once from the spec, and the documents made from
//! it: the [`asyncapi`] document and the [`typescript`] module.

pub mod asyncapi;
pub mod catalog;
pub mod typescript;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::path::{Path, PathBuf};

    use super::catalog::Catalog;
    use super::{asyncapi, typescript};

    /// The example RealtimeApps (manifests/examples), by name.
    fn examples() -> Vec<(String, switchboard_spec::CompiledApp)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut files: Vec<PathBuf> = std::fs::read_dir(root.join("manifests/examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
            .into_iter()
            .filter_map(|f| {
                let text = std::fs::read_to_string(&f).unwrap();
                text.lines().any(|l| l == "kind: RealtimeApp").then(|| {
                    let app = switchboard_spec::load(&text)
                        .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
                    (app.name.clone(), app)
                })
            })
            .collect()
    }

    /// What is generated for each example app is checked in under
    /// clients/typescript/examples/<app>/ (the AsyncAPI document and the TypeScript
    /// module), and is current (SWITCHBOARD_UPDATE_GENERATED=1 writes them: see
    /// hack/generate.sh).
    #[test]
    fn checked_in_example_documents_match_the_generated_ones() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/typescript/examples");
        let update = std::env::var_os("SWITCHBOARD_UPDATE_GENERATED").is_some();
        for (name, app) in examples() {
            let catalog = Catalog::new(&app);
            for (file, generated) in [
                ("asyncapi.json".to_owned(), asyncapi::render(&catalog)),
                (
                    typescript::file_name(&catalog),
                    typescript::module(&catalog),
                ),
            ] {
                let path = dir.join(&name).join(file);
                if update {
                    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                    std::fs::write(&path, &generated).unwrap();
                    continue;
                }
                let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    checked_in == generated,
                    "{} is not what the server generates for the {name} example: run bash hack/generate.sh",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn the_chat_example_is_described_route_by_route_and_topic_by_topic() {
        let (_, chat) = examples().into_iter().find(|(n, _)| n == "chat").unwrap();
        let doc = asyncapi::document(&Catalog::new(&chat));
        let join = &doc["operations"]["JOIN_ROOM"];
        assert_eq!(join["action"], "receive");
        assert_eq!(
            join["x-switchboard-route"]["subscribe"]["topic"],
            "room:{roomId}"
        );
        let room = &doc["channels"]["topic-room-roomId"];
        assert_eq!(room["address"], "room:{roomId}");
        assert!(room["parameters"]["roomId"].is_object());
        assert!(room["messages"]["ROOM_MESSAGE"].is_object());
        // Boards keep history and announce members: their deliveries carry offsets,
        // join/leave frames arrive on them, and the history answer holds notes.
        let board = &doc["channels"]["topic-board-boardId"];
        assert_eq!(board["x-switchboard-topic"]["history"]["size"], 100);
        assert!(board["messages"]["ws.join"].is_object());
        let history = &doc["components"]["messages"]["BOARD_HISTORY.answer"]["payload"];
        let note = &history["properties"]["payload"]["properties"]["publications"]["items"]["properties"]
            ["payload"];
        assert_eq!(note["required"], serde_json::json!(["boardId", "text"]));
        // A request route answers its reply type, and fails with RPC_ERROR.
        let fetch = &doc["operations"]["FETCH_PROFILE"]["reply"]["messages"];
        assert_eq!(fetch[1]["$ref"], "#/channels/connection/messages/RPC_ERROR");
        let profile = &doc["components"]["messages"]["FETCH_PROFILE.answer"];
        assert_eq!(profile["name"], "PROFILE");
    }
}
