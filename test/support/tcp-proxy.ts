import net from "node:net";

/**
 * A TCP proxy in front of a real service (PostgreSQL, Redis), for fault
 * tests: the network between the gateway and its store, under the test's
 * control.
 *
 * - `pause()`: connections stay open and new ones are accepted, but no byte
 *   moves either way: a stalled server or a dead network (what timeouts are for).
 * - `cut()`: every connection is reset and new ones are refused at once (reset
 *   on accept): a server that went away.
 * - `resume()`: back to forwarding; held bytes flow again.
 */
export interface TcpProxy {
  /** `127.0.0.1:<port>` the clients connect to. */
  readonly host: string;
  readonly port: number;
  /** `url` with its host and port replaced by the proxy's. */
  via(url: string): string;
  pause(): void;
  cut(): void;
  resume(): void;
  close(): Promise<void>;
}

type Mode = "forward" | "pause" | "cut";

/** Listens on a free port of 127.0.0.1 and forwards to `target` (`host:port`). */
export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  let mode: Mode = "forward";
  const pairs = new Set<[net.Socket, net.Socket]>();

  const server = net.createServer((client) => {
    if (mode === "cut") {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect(target);
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
    client.pipe(upstream);
    upstream.pipe(client);
    if (mode === "pause") hold(pair);
  });

  function hold([a, b]: [net.Socket, net.Socket]): void {
    a.pause();
    b.pause();
    // pipe() resumes on drain; unpiping keeps the sockets still until resume().
    a.unpipe(b);
    b.unpipe(a);
  }

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;

  return {
    host: "127.0.0.1",
    port,
    via(url) {
      const parsed = new URL(url);
      parsed.hostname = "127.0.0.1";
      parsed.port = String(port);
      return parsed.toString();
    },
    pause() {
      mode = "pause";
      for (const pair of pairs) hold(pair);
    },
    cut() {
      mode = "cut";
      for (const [a, b] of pairs) {
        a.resetAndDestroy();
        b.destroy();
      }
      pairs.clear();
    },
    resume() {
      mode = "forward";
      for (const [a, b] of pairs) {
        a.pipe(b);
        b.pipe(a);
        a.resume();
        b.resume();
      }
    },
    async close() {
      mode = "cut";
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      pairs.clear();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
