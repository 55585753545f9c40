#!/bin/sh
# One benchmark run inside its container, in madengine's order, from /myworkspace:
#   say TEXT, dir NAME KEEP, clone URL, pre PATH ARG..., copy DIR, model WRAPPER ARG...,
#   skip TEXT, post PATH ARG..., collect FILE...
# Each step arrives as `KIND COUNT WORD...` (COUNT words follow). Every value is an
# argument, never code: the only shell text run is the tools file's command prefix.
# A failing step leaves `KIND<TAB>CODE<TAB>WHAT` in .madengine/failed and ends the run
# with its exit code (KIND `model_oom`: the model failed after a kill for memory).
# pytest-madengine writes the steps (pytest_madengine/workspace.py).

state=.madengine
model_dir=run_directory
keep_model_dir=no
workspace=$(pwd)

# The words `"${1}" "${2}" ... "${N}"`: references only, for `eval set --`.
refs() {
  _i=1
  _out=
  while [ "$_i" -le "$1" ]; do
    _out="$_out \"\${$_i}\""
    _i=$((_i + 1))
  done
  printf '%s' "$_out"
}

fail() { # KIND CODE WHAT
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >"$workspace/$state/failed"
  exit "$2"
}

cleanup() {
  cd "$workspace" || return
  if [ "$keep_model_dir" != yes ]; then
    rm -rf "./$model_dir"
  fi
}

step_say() {
  printf '%s\n' "$1"
}

step_dir() { # NAME KEEP
  model_dir=$1
  keep_model_dir=$2
  rm -rf "./$model_dir"
  mkdir -p "./$model_dir"
  trap cleanup EXIT
}

step_clone() { # URL
  printf 'madengine: git clone %s\n' "$1"
  export GIT_TERMINAL_PROMPT=0
  rmdir "./$model_dir" 2>/dev/null
  if [ -n "${MAD_GIT_SSH_KEY:-}" ]; then
    chmod 600 "$MAD_GIT_SSH_KEY" 2>/dev/null
    GIT_SSH_COMMAND="sh $workspace/$state/git-ssh.sh" git clone -- "$1" "./$model_dir"
  elif [ -n "${MAD_GIT_PASSWORD:-}" ]; then
    # The helper reads the login from the environment when git asks for it.
    git -c credential.helper='!f() { echo "username=${MAD_GIT_USERNAME}"; echo "password=${MAD_GIT_PASSWORD}"; }; f' \
      clone -- "$1" "./$model_dir"
  else
    git clone -- "$1" "./$model_dir"
  fi
  _code=$?
  [ "$_code" -eq 0 ] || fail clone "$_code" "$1"
  git -C "./$model_dir" rev-parse HEAD >"$state/git_commit" 2>/dev/null
  git -C "./$model_dir" submodule update --init --recursive || fail clone $? "$1 (submodules)"
}

script_step() { # KIND PATH ARG...
  _kind=$1
  _path=$2
  shift 2
  printf 'madengine: %s %s\n' "$_kind" "$_path"
  cp -RLp -- "$_path" "./$model_dir/" || fail "$_kind" 1 "$_path"
  (cd "./$model_dir" && bash "$(basename "$_path")" "$@")
  _code=$?
  [ "$_code" -eq 0 ] || fail "$_kind" "$_code" "$_path"
}

step_pre() { script_step pre_script "$@"; }
step_post() { script_step post_script "$@"; }

step_copy() { # DIR
  # Links inside the tree arrive as files; one leaving it stays a link (-P), as it was
  # under madengine's mount, so a target the container lacks does not fail the copy.
  cp -RPp -- "$1/." "./$model_dir/" || fail copy 1 "$1"
  chmod -R a+rw "./$model_dir"
}

# Processes of this container the kernel has killed for memory so far (its memory
# cgroup's count, v2 or v1): counted for a kill by the host's OOM killer too, which the
# engine's OOMKilled flag misses where no memory limit is set.
oom_kills() {
  for _events in /sys/fs/cgroup/memory.events /sys/fs/cgroup/memory/memory.oom_control; do
    [ -r "$_events" ] || continue
    while read -r _key _value; do
      [ "$_key" = oom_kill ] && { printf '%s' "$_value"; return; }
    done <"$_events"
  done
  printf 0
}

step_model() { # WRAPPER ARG...
  _wrapper=$1
  shift
  _kills=$(oom_kills)
  if [ -n "$_wrapper" ]; then
    (cd "./$model_dir" && bash -c "$_wrapper \"\$@\"" madengine-tool "$@")
  else
    (cd "./$model_dir" && "$@")
  fi
  _code=$?
  if [ "$_code" -ne 0 ] && [ "$(oom_kills)" -gt "${_kills:-0}" ] 2>/dev/null; then
    fail model_oom "$_code" "$1"
  fi
  [ "$_code" -eq 0 ] || fail model "$_code" "$1"
}

step_skip() {
  printf '%s\n' "$1"
}

step_collect() { # FILE... : left in the workspace as madengine copies them
  for _name in "$@"; do
    [ -f "./$model_dir/$_name" ] && cp -p -- "./$model_dir/$_name" .
  done
  for _file in "./$model_dir"/*_output.csv "./$model_dir"/*_trace.csv "./$model_dir"/library_trace.csv; do
    [ -f "$_file" ] && cp -p -- "$_file" .
  done
  return 0
}

while [ "$#" -ge 2 ]; do
  _kind=$1
  _count=$2
  shift 2
  case $_kind in
    say | dir | clone | pre | copy | model | skip | post | collect) ;;
    *) fail protocol 2 "unknown step $_kind" ;;
  esac
  # A subshell-free call with exactly this step's words, then past them.
  eval "step_$_kind $(refs "$_count")"
  shift "$_count"
done
