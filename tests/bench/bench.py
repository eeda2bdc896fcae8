#!/usr/bin/python3
"""The Python side of the benchmarks (tests/bench/*.sh): a lag sampler, a sampler of pgbench's
wait events, the client-side loop,
submitting a job and waiting for its end, CPU ticks from /proc, pgbench log statistics and plot
series. Run with Debian's python3 (psycopg): bench.py COMMAND ARGS..."""
import glob, os, select, signal, sys, time
import psycopg

def connect(conninfo, name):
    return psycopg.connect(conninfo, autocommit=True, application_name=name)

def sample(conninfo, out):
    """Every 100 ms: time, WAL write position, standby byte lag (replay_lsn), until SIGTERM."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    q = ("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,"
         " (SELECT max(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn))::bigint"
         "  FROM pg_stat_replication WHERE application_name = 'standby1')")
    conn = connect(conninfo, 'bench-sampler')
    nxt = time.time()
    with open(out, 'w', buffering=1) as f:
        while not stop:
            try:
                lsn, lag = conn.execute(q).fetchone()
                f.write('%.3f %d %d\n' % (time.time(), lsn, -1 if lag is None else lag))
            except psycopg.Error:
                time.sleep(0.5)
                try:
                    conn = connect(conninfo, 'bench-sampler')
                except psycopg.Error:
                    pass
            nxt += 0.1
            d = nxt - time.time()
            if d > 0:
                time.sleep(d)
            else:
                nxt = time.time()

def waits(conninfo, out, hz='200'):
    """HZ times a second (default 200), until SIGTERM: for each pgbench session that is active,
    "time what", what being CPU (active, no wait event) or WAITTYPE:EVENT."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    q = ("SELECT extract(epoch FROM clock_timestamp())::float8, coalesce(wait_event_type || ':' || wait_event, 'CPU')"
         " FROM pg_stat_activity WHERE application_name = 'pgbench' AND state = 'active'")
    conn = connect(conninfo, 'bench-waits')
    step = 1.0 / float(hz)
    nxt = time.time()
    with open(out, 'w', buffering=1 << 16) as f:
        while not stop:
            try:
                for t, what in conn.execute(q).fetchall():
                    f.write('%.4f %s\n' % (t, what))
            except psycopg.Error:
                break
            nxt += step
            d = nxt - time.time()
            if d > 0:
                time.sleep(d)
            else:
                nxt = time.time()

def waitstats(path, t0, t1, top='6'):
    """Where pgbench's active sessions were between t0 and t1: the TOP most frequent of CPU and
    each wait event, as shares of all active samples ("CPU=71% Lock:tuple=12% ..."), and the mean
    number of active sessions per sample round."""
    t0, t1 = float(t0), float(t1)
    count = {}
    n = 0
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 2 and t0 <= float(p[0]) <= t1:
                count[p[1]] = count.get(p[1], 0) + 1
                n += 1
    if not n:
        print('none')
        return
    best = sorted(count.items(), key=lambda kv: -kv[1])[:int(top)]
    print(' '.join('%s=%.0f%%' % (k, 100.0 * v / n) for k, v in best) + ' (%d samples)' % n)

def client(conninfo, table, batch, log):
    """The usual hand-written script: autocommit, one round trip per statement, keyset batches."""
    c0 = os.times()
    t0 = time.time()
    conn = connect(conninfo, 'bench-client')
    cur = conn.cursor()
    last = cur.execute('SELECT min(id) - 1 FROM %s' % table).fetchone()[0]
    done = []
    changed = 0
    while True:
        b0 = time.time()
        upto = cur.execute('SELECT max(id) FROM (SELECT id FROM %s WHERE id > %%s ORDER BY id LIMIT %%s) k'
                           % table, (last, batch)).fetchone()[0]
        if upto is None:
            break
        cur.execute('UPDATE %s SET state = status WHERE id > %%s AND id <= %%s'
                    ' AND state IS DISTINCT FROM status' % table, (last, upto))
        changed += cur.rowcount
        t = time.time()
        done.append((t, upto, 1000 * (t - b0)))
        last = upto
    t1 = time.time()
    conn.close()
    c1 = os.times()
    with open(log, 'w') as f:
        for t, k, ms in done:
            f.write('%.6f %d %.3f\n' % (t, k, ms))
    print('%.6f %d %d %.3f' % (t1 - t0, changed, len(done), (c1.user - c0.user) + (c1.system - c0.system)))

def wait_state(conn, job, timeout):
    """The state a job ends in, read once a second or on a notification of backfill_jobs (conn
    LISTENs already). One connection and no polling: a psql started every few hundred ms (a
    process, a backend fork, a login) costs the application more than a backfill does on 2 CPUs,
    and would be counted against backfilld alone."""
    deadline = time.time() + float(timeout)
    while True:
        state = conn.execute('SELECT state FROM backfill.jobs WHERE id = %s', (job,)).fetchone()[0]
        if state in ('done', 'failed', 'cancelled'):
            return state
        if time.time() > deadline:
            print('job %d is still %s after %s s' % (job, state, timeout), file=sys.stderr)
            sys.exit(1)
        select.select([conn.fileno()], [], [], 1.0)

def submit_wait(conninfo, insert_sql, timeout, at=None):
    """INSERT a job (RETURNING id), at the epoch time AT if given, wait for its end; print its id
    and state. Started ahead of AT, the interpreter's start (~0.3 s of CPU) and the login are
    over before the job is submitted, and the submission costs what a psql INSERT would."""
    conn = connect(conninfo, 'bench-wait')
    conn.execute('LISTEN backfill_jobs')
    if at is not None:
        time.sleep(max(0.0, float(at) - time.time()))
    job = conn.execute(insert_sql).fetchone()[0]
    print(job, wait_state(conn, job, timeout))

def burn(busy_ms, period_ms, seconds, at=None):
    """From the epoch time AT on, for SECONDS: spin BUSY_MS then sleep out each PERIOD_MS. No
    database work: started under chrt -i (SCHED_IDLE), it shows what any CPU work at the lowest
    priority costs the application on this machine (bench_settings.sh --floor)."""
    busy, period = float(busy_ms) / 1000, float(period_ms) / 1000
    if at is not None:
        time.sleep(max(0.0, float(at) - time.time()))
    end = time.monotonic() + float(seconds)
    while time.monotonic() < end:
        t = time.monotonic()
        while time.monotonic() - t < busy:
            pass
        time.sleep(max(0.0, period - (time.monotonic() - t)))

def ticks(pid):
    """utime + stime (clock ticks) of a live process, and of its reaped children."""
    with open('/proc/%d/stat' % pid) as f:
        s = f.read()
    fields = s[s.rindex(')') + 2:].split()
    # fields[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17, ppid 4
    return int(fields[11]) + int(fields[12]), int(fields[13]) + int(fields[14]), int(fields[1])

def procstat(pm_pid, *pids):
    """CPU ticks of a postmaster's tree (itself, reaped and live children), then of each pid."""
    pm = int(pm_pid)
    own, reaped, _ = ticks(pm)
    total = own + reaped
    for d in os.listdir('/proc'):
        if d.isdigit() and int(d) != pm:
            try:
                t, _, ppid = ticks(int(d))
            except (OSError, ValueError):
                continue
            if ppid == pm:
                total += t
    out = [total]
    for p in pids:
        try:
            out.append(ticks(int(p))[0])
        except (OSError, ValueError):
            out.append(-1)
    print(*out)

def pgbench_lines(pattern):
    """(end epoch, latency ms) of every pgbench transaction logged under the prefix."""
    for path in glob.glob(pattern + '.*'):
        with open(path) as f:
            for line in f:
                p = line.split()
                if len(p) < 6 or p[2] == 'skipped':
                    continue
                yield int(p[4]) + int(p[5]) / 1e6, int(p[2]) / 1000.0

def pct(v, q):
    if not v:
        return float('nan')
    v = sorted(v)
    i = max(0, min(len(v) - 1, int(-(-q * len(v) // 1)) - 1))
    return v[i]

def latstats(pattern, t0, t1, tail):
    """TPS (transactions ended in [t0, t1]) and p50/p99 latency of those ended in [t0, t1 + tail]."""
    t0, t1, tail = float(t0), float(t1), float(tail)
    lat = []
    n = 0
    for t, ms in pgbench_lines(pattern):
        if t0 <= t <= t1:
            n += 1
        if t0 <= t <= t1 + tail:
            lat.append(ms)
    tps = n / (t1 - t0) if t1 > t0 else float('nan')
    print('%.1f %.2f %.2f %d' % (tps, pct(lat, 0.50), pct(lat, 0.99), len(lat)))

def lag(path, t0, t1):
    """Peak and mean standby byte lag, and WAL written, between t0 and t1."""
    t0, t1 = float(t0), float(t1)
    lags = []
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) == 3 and t0 <= float(p[0]) <= t1 and int(p[2]) >= 0:
                lags.append(int(p[2]))
    if not lags:
        print('NaN NaN 0')
        return
    print(max(lags), sum(lags) / len(lags), len(lags))

def series(out, t0, t1, total, events, pattern, lead, tail):
    """Per second since t0: committed rows/s, % committed, pgbench p99 and TPS."""
    t0, t1, total, lead, tail = float(t0), float(t1), float(total), float(lead), float(tail)
    rows = {}
    with open(events) as f:
        for line in f:
            p = line.split()
            if len(p) >= 2:
                s = int((float(p[0]) - t0) // 1)
                rows[s] = rows.get(s, 0) + float(p[1])
    lat = {}
    for t, ms in pgbench_lines(pattern):
        s = int((t - t0) // 1)
        lat.setdefault(s, []).append(ms)
    first, last = -int(lead), int((t1 - t0) // 1 + tail)
    cum = 0.0
    with open(out, 'w') as f:
        for s in range(first, last + 1):
            cum += rows.get(s, 0)
            r = rows.get(s, 0) if 0 <= s <= (t1 - t0) + 1 else '?'
            l = lat.get(s, [])
            f.write('%d\t%s\t%.3f\t%s\t%d\n' % (s, r, 100 * cum / total,
                    '%.2f' % pct(l, 0.99) if l else 'NaN', len(l)))  # NaN: a gap in the line

def flat(events):
    """Median batch duration (third column) of the first tenth of the batches, of the last tenth."""
    d = []
    with open(events) as f:
        for line in f:
            p = line.split()
            if len(p) >= 3:
                d.append(float(p[2]))
    if not d:
        print('NaN NaN NaN 0')
        return
    n = max(1, len(d) // 10)
    a, b = pct(d[:n], 0.5), pct(d[-n:], 0.5)
    print('%.2f %.2f %.3f %d' % (a, b, b / a if a > 0 else float('nan'), len(d)))

cmd = sys.argv[1]
args = sys.argv[2:]
{'sample': sample, 'client': client, 'submit-wait': submit_wait, 'procstat': procstat,
 'latstats': latstats, 'lag': lag, 'series': series, 'flat': flat, 'waits': waits,
 'waitstats': waitstats, 'burn': burn}[cmd](*args)
