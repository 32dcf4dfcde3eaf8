// The demo page of the built-in example app (served at / by `switchboard-server` when it
// runs the built-in app): a board with history and presence, through the SDK and the
// generated chat module. It reconnects and recovers on its own; the connection state,
// recovery outcome and member count are on screen.
import { Client } from "@switchboard/client";
import { chat } from "../examples/chat/chat.js";

const board = new URLSearchParams(location.search).get("board") ?? "lobby";
const scheme = location.protocol === "https:" ? "wss" : "ws";
const client = new Client({ url: `${scheme}://${location.host}/ws`, backoff: { initialMs: 200, maxMs: 2000 } });
const app = chat(client);

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const notes = $<HTMLUListElement>("notes");
const state = $<HTMLSpanElement>("state");
const recovery = $<HTMLSpanElement>("recovery");
const members = $<HTMLSpanElement>("members");
const form = $<HTMLFormElement>("post");
const input = $<HTMLInputElement>("text");
$<HTMLSpanElement>("board").textContent = board;

const seen = new Set<number>();
function show(text: string, who: string | undefined, offset: number | undefined): void {
  if (offset !== undefined) {
    if (seen.has(offset)) return;
    seen.add(offset);
  }
  const li = document.createElement("li");
  li.textContent = `${who ?? "?"}: ${text}`;
  notes.append(li);
}

async function countMembers(): Promise<void> {
  const answer = await app.request.BOARD_MEMBERS({ boardId: board });
  members.textContent = String(answer.count);
}

client.onState((s) => {
  state.textContent = s;
  document.body.dataset.state = s;
});
app.on.BOARD_NOTE((note, meta) => show(note.text, meta.publisher, meta.offset));
app.joined(() => void countMembers());
app.left(() => void countMembers());

async function start(): Promise<void> {
  const info = await client.ready();
  state.textContent = client.state;
  document.body.dataset.state = client.state;
  $<HTMLSpanElement>("user").textContent = info.user.id;
  // What the board already holds, then live notes (and, after a reconnect, the missed ones).
  const past = await app.request.BOARD_HISTORY({ boardId: board, limit: 50 });
  for (const p of past.publications) {
    const payload = p.payload as { text: string };
    show(payload.text, p.publisher, p.offset);
  }
  await app.subscribe.OPEN_BOARD(
    { boardId: board },
    {
      onResubscribed: (s) => {
        if (s.recovered) recovery.textContent = "reconnected: recovered everything missed";
        void countMembers();
      },
      onRecoveryFailed: (reason) => {
        recovery.textContent = `could not recover (${reason ?? "?"}): reloaded`;
        void app.request.BOARD_HISTORY({ boardId: board, limit: 50 }).then((page) => {
          for (const p of page.publications) show((p.payload as { text: string }).text, p.publisher, p.offset);
        });
      },
    },
  );
  await countMembers();
  document.body.dataset.ready = "true";
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = input.value.trim();
  if (text === "") return;
  input.value = "";
  app.request.POST_NOTE({ boardId: board, text }).catch((e: unknown) => {
    recovery.textContent = `not posted: ${String(e)}`;
  });
});

void start();
