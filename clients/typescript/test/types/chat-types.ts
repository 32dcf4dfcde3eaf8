// Compile-time checks of the generated chat module: `tsc` (npm test runs it first)
// fails if a line marked @ts-expect-error compiles, so wrong payloads and answers are
// proven to be type errors. Never run; only type-checked.
import type { Client } from "@switchboard/client";
import { chat } from "../../examples/chat/chat.js";

export function typed(client: Client): void {
  const app = chat(client);
  app.send.SEND_MESSAGE({ roomId: "lobby", text: "hi" });
  // @ts-expect-error: text is required
  app.send.SEND_MESSAGE({ roomId: "lobby" });
  // @ts-expect-error: roomId is a string
  app.send.JOIN_ROOM({ roomId: 42 });
  // @ts-expect-error: no such route
  app.send.NO_SUCH_ROUTE({});
  // @ts-expect-error: the payload is a strict object
  app.send.JOIN_ROOM({ roomId: "lobby", extra: true });

  void app.request.FETCH_PROFILE({ userId: "bob" }).then((profile) => {
    const name: string = profile.displayName;
    // @ts-expect-error: PROFILE's displayName is a string
    const wrong: number = profile.displayName;
    return [name, wrong];
  });
  app.on.ROOM_MESSAGE((message, meta) => {
    const text: string = message.text;
    const topic: string | undefined = meta.topic;
    // @ts-expect-error: ROOM_MESSAGE's text is a string
    const n: number = message.text;
    return [text, topic, n];
  });
}
