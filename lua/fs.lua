-- fs.mkdir {parents}, fs.remove {recursive} and fs.exists, on the
-- primitives of bindings/fs.c (each one call on libuv's thread pool).
local M = ...
local fs = M.fs
local raw = fs._raw
fs._raw = nil

local function check_path(fname, path)
  if type(path) ~= "string" then
    error(("bad argument #1 to '%s' (string expected, got %s)"):format(fname, type(path)), 3)
  end
end

local function check_opts(fname, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error(("bad argument #2 to '%s' (table expected, got %s)"):format(fname, type(opts)), 3)
  end
  return opts or {}
end

local function is_dir(path)
  local st = fs.stat(path)
  return st ~= nil and st.type == "directory"
end

local function mkdir_parents(path, mode)
  local ok, err, code = raw.mkdir(path, mode)
  if ok or (code == "EEXIST" and is_dir(path)) then return true end
  if code ~= "ENOENT" then return nil, err, code end
  local parent = path:match("^(.*[^/])/+[^/]+/*$")
  if not parent then return nil, err, code end
  ok, err, code = mkdir_parents(parent, mode)
  if not ok then return nil, err, code end
  ok, err, code = raw.mkdir(path, mode)
  if ok or (code == "EEXIST" and is_dir(path)) then return true end
  return nil, err, code
end

-- fs.mkdir(path [, {parents = true, mode = 0755}]) -> true | nil, err
-- With parents, missing parents are made and an existing directory is
-- not an error (mkdir -p).
function fs.mkdir(path, opts)
  check_path("fs.mkdir", path)
  opts = check_opts("fs.mkdir", opts)
  local mode = opts.mode or tonumber("777", 8)
  if opts.parents then return mkdir_parents(path, mode) end
  return raw.mkdir(path, mode)
end

local function remove_tree(path)
  local st, err, code = fs.lstat(path)
  if not st then return nil, err, code end
  if st.type ~= "directory" then return raw.unlink(path) end
  local names
  names, err, code = fs.list(path)
  if not names then return nil, err, code end
  for _, name in ipairs(names) do
    local ok
    ok, err, code = remove_tree(path .. "/" .. name)
    if not ok then return nil, err, code end
  end
  return raw.rmdir(path)
end

-- fs.remove(path [, {recursive = true}]) -> true | nil, err
-- A file, a link (not what it points to) or an empty directory; with
-- recursive, a directory and everything under it (rm -r).
function fs.remove(path, opts)
  check_path("fs.remove", path)
  opts = check_opts("fs.remove", opts)
  if opts.recursive then return remove_tree(path) end
  local st, err, code = fs.lstat(path)
  if not st then return nil, err, code end
  if st.type == "directory" then return raw.rmdir(path) end
  return raw.unlink(path)
end

-- fs.exists(path) -> true | false (nil, err when it cannot tell)
function fs.exists(path)
  check_path("fs.exists", path)
  local st, err, code = fs.stat(path)
  if st then return true end
  if code == "ENOENT" or code == "ENOTDIR" then return false end
  return nil, err, code
end
