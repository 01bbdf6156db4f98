# Shared by the HTTP load scripts (scripts/bench-http.sh, scripts/bench-reports.sh):
# waiting for the servers they start, and wrk's paced POST. Source it; it
# defines functions only.

# first_line_of FILE: waits up to 5 s for FILE to get a line (a server that
# prints its address), then prints that line.
first_line_of() {
  for _ in $(seq 1 100); do [ -s "$1" ] && break; sleep 0.05; done
  head -1 "$1"
}

# listening_address LOG: waits up to 20 s for `serve --http` to write
# "listening on http://…" to LOG and prints the address; prints LOG and
# fails if it never does.
listening_address() {
  local addr=""
  for _ in $(seq 1 400); do
    addr="$(grep -o 'listening on http://[0-9.:]*' "$1" | sed 's/listening on //' || true)"
    [ -n "$addr" ] && break
    sleep 0.05
  done
  [ -n "$addr" ] || { cat "$1" >&2; return 1; }
  echo "$addr"
}

# write_post_lua FILE DELAY_MS: a wrk script posting one short chat
# completion, each connection waiting DELAY_MS between requests (so
# connections × 1000 / DELAY_MS is the request rate).
write_post_lua() {
  cat >"$1" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"deepseek/deepseek-v3.2","messages":[{"role":"user","content":"What is the capital of France?"}],"max_tokens":64}'
function delay() return $2 end
LUA
}
