// A write stream across two pods with a Redis fault in the middle, and the
// checks that nothing was lost: shared by the Redis Cluster and Sentinel
// failover tests.
import assert from 'node:assert/strict';
import { Device, uid, waitFor, sleep } from './harness.mjs';

/** What a device holds: its `pending-updates`, then its live events in seq order. */
export function deviceState(d) {
  const state = {};
  for (const e of d.pending.flat()) {
    if (e.type === 'remove') delete state[e.key];
    else state[e.key] = e.value;
  }
  const live = [...d.updates.map((e) => ({ ...e, remove: false })), ...d.removes.map((e) => ({ ...e, remove: true }))]
    .sort((x, y) => x.seq - y.seq);
  for (const e of live) {
    if (e.remove) delete state[e.key];
    else state[e.key] = e.value;
  }
  return state;
}

export const sorted = (o) => JSON.stringify(Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]])));

/**
 * Watchers on both pods (two on `p2`, one on `p1`), 200 REST writes
 * alternating over the pods, and a fault 300 ms into them. `prepare(user)`
 * runs once the watchers are connected and returns the fault: an async
 * function whose figures include `resubscribed_ms` (fault to subscriptions
 * live again). Checks that no acknowledged write is lost (the database and
 * every device hold the last acked value of every key), that no device gets
 * a seq twice or out of order, and that every device reaches the last seq;
 * returns the figures.
 */
export async function writeStream(p1, p2, prepare) {
  const user = uid('u');
  const key = p1.createKey(user);
  const watchers = [
    await new Device(p2.url, { userId: user, instanceId: 'w1', apiKey: key }).ready(),
    await new Device(p2.url, { userId: user, instanceId: 'w2', apiKey: key }).ready(),
    await new Device(p1.url, { userId: user, instanceId: 'w3', apiKey: key }).ready(),
  ];
  try {
    const fault = await prepare(user);
    const acked = {};
    let lastSeq = 0;
    const ackTimes = [];
    const writes = (async () => {
      for (let i = 0; i < 200; i++) {
        const r = await [p1, p2][i % 2].rest('PUT', `/sync-storage/item/k${i % 13}`, key, { value: i });
        assert.equal(r.status, 200, JSON.stringify(r.body));
        acked[`k${i % 13}`] = i;
        lastSeq = Math.max(lastSeq, r.body.item.seq);
        ackTimes.push(Date.now());
        await sleep(10);
      }
    })();
    await sleep(300);
    const faultAt = Date.now();
    const figures = await fault();
    await writes;
    const stored = Object.fromEntries((await p1.rest('GET', '/sync-storage/items', key)).body.map((i) => [i.key, i.value]));
    assert.equal(sorted(stored), sorted(acked), 'the database holds every acknowledged write');
    assert.equal(lastSeq, 200, 'one seq per write, none applied twice');
    for (const w of watchers) {
      await waitFor(() => sorted(deviceState(w)) === sorted(acked), { what: `${w.socket.io.opts.query.instanceId} to converge`, timeout: 20000 });
      const seqs = w.liveSeqs();
      assert.equal(new Set(seqs).size, seqs.length, 'no seq delivered twice');
      assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'seqs arrive in order');
      assert.equal(Math.max(...seqs), lastSeq, 'the last write arrived');
    }
    const convergedAt = Date.now();
    const repairedAt = faultAt + figures.resubscribed_ms;
    return {
      ...figures,
      // Acked while the channel had no live subscription: delivered by the catch-up.
      writes_during_fault: ackTimes.filter((t) => t >= faultAt && t <= repairedAt).length,
      writes_after_fault: ackTimes.filter((t) => t >= faultAt).length,
      converged_after_last_ack_ms: convergedAt - ackTimes[ackTimes.length - 1],
      lost: 0,
    };
  } finally {
    for (const w of watchers) w.close();
  }
}
