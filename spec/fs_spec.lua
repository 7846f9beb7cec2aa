-- fs: files and directories on libuv's thread pool.
local H = require("spec.support.helper")
local ah = require("asynchost")

local root = H.env("AH_TEST_TMP") .. "/fs"
os.execute("mkdir -p " .. H.shell_quote(root))

local seq = 0
local function tmpname(name)
  seq = seq + 1
  return ("%s/%d-%s"):format(root, seq, name)
end

-- Open descriptors of this process, to check that nothing leaks.
local fd_count = H.fd_count

local function is_root()
  return exec({"id", "-u"}).stdout == "0\n"
end

describe("fs", function()
  H.check_each_test_for_leaks(setup, before_each, after_each)

  describe("read", function()
    it("returns the whole file, binary bytes included", function()
      local path = tmpname("bin")
      local parts = {}
      for i = 0, 255 do parts[#parts + 1] = string.char(i) end
      local data = table.concat(parts):rep(20000) -- 5 MB
      local f = assert(io.open(path, "wb"))
      f:write(data)
      f:close()
      local got = fs.read(path)
      assert.equal(#data, #got)
      assert.is_true(data == got)
    end)

    it("returns an empty string for an empty file", function()
      local path = tmpname("empty")
      assert(io.open(path, "w")):close()
      assert.equal("", fs.read(path))
    end)

    it("reads files whose size stat does not know (/proc)", function()
      local s = fs.read("/proc/self/status")
      assert.matches("^Name:", s)
      assert.matches("\nPid:%s+%d+", s)
    end)

    it("returns io: with the path and reason for a missing file", function()
      local path = root .. "/no-such-file"
      local s, err, code = fs.read(path)
      assert.is_nil(s)
      assert.equal("io: " .. path .. ": no such file or directory", err)
      assert.equal("ENOENT", code)
    end)

    it("returns io: for a directory", function()
      local s, err, code = fs.read(root)
      assert.is_nil(s)
      assert.equal("io: " .. root .. ": illegal operation on a directory", err)
      assert.equal("EISDIR", code)
    end)

    it("returns io: permission denied for a file it may not read", function()
      local path = tmpname("secret")
      assert(fs.write(path, "secret"))
      os.execute("chmod 600 " .. H.shell_quote(path))
      if not is_root() then
        os.execute("chmod 000 " .. H.shell_quote(path))
        local s, err, code = fs.read(path)
        assert.is_nil(s)
        assert.equal("io: " .. path .. ": permission denied", err)
        assert.equal("EACCES", code)
        return
      end
      -- root reads anything: ask an unprivileged user, through asynchost
      local script = ("print(fs.read(%q))"):format(path)
      local res = exec({"runuser", "-u", "nobody", "--", H.env("AH_TEST_BIN"), "-e", script})
      assert.equal(0, res.code, res.stderr)
      assert.equal("nil\tio: " .. path .. ": permission denied\tEACCES\n", res.stdout)
    end)
  end)

  describe("write and append", function()
    it("write creates a file and replaces what was there", function()
      local path = tmpname("w")
      assert.is_true(fs.write(path, "first version, longer"))
      assert.is_true(fs.write(path, "second"))
      assert.equal("second", fs.read(path))
      assert.is_true(fs.write(path, ""))
      assert.equal("", fs.read(path))
    end)

    it("append adds to the end, creating the file if needed", function()
      local path = tmpname("a")
      assert.is_true(fs.append(path, "one\n"))
      assert.is_true(fs.append(path, "two\n"))
      assert.equal("one\ntwo\n", fs.read(path))
    end)

    it("writes 20 MB with binary bytes intact", function()
      local path = tmpname("big")
      local data = ("\0\1\2\255abc\n"):rep(2500000)
      assert.is_true(fs.write(path, data))
      assert.equal(#data, fs.stat(path).size)
      assert.is_true(fs.read(path) == data)
    end)

    it("returns io: for a missing directory or a directory path", function()
      local ok, err, code = fs.write(root .. "/no/such/dir/f", "x")
      assert.is_nil(ok)
      assert.equal("io: " .. root .. "/no/such/dir/f: no such file or directory", err)
      assert.equal("ENOENT", code)
      ok, err, code = fs.append(root, "x")
      assert.is_nil(ok)
      assert.equal("EISDIR", code)
      assert.matches("^io: ", err)
    end)

    it("returns io: for a read-only file system", function()
      -- /proc/version is read-only even for root
      local ok, err = fs.write("/proc/version", "x")
      assert.is_nil(ok)
      assert.matches("^io: /proc/version: ", err)
    end)

    it("many concurrent writes and reads all land", function()
      local list = {}
      for i = 1, 200 do list[i] = i end
      local got = gather(list, function(i)
        local path = tmpname("c" .. i)
        assert(fs.write(path, ("line %d\n"):format(i):rep(i)))
        return fs.read(path)
      end, {limit = 50})
      for i = 1, 200 do assert.equal(("line %d\n"):format(i):rep(i), got[i]) end
    end)
  end)

  describe("lines", function()
    it("iterates the lines without their newlines, the last one unterminated", function()
      local path = tmpname("l")
      assert(fs.write(path, "one\n\nthree\nfour"))
      local got = {}
      for line in fs.lines(path) do got[#got + 1] = line end
      assert.same({"one", "", "three", "four"}, got)
    end)

    it("keeps the newlines with the \"L\" format", function()
      local path = tmpname("L")
      assert(fs.write(path, "a\nb\n"))
      local got = {}
      for line in fs.lines(path, "L") do got[#got + 1] = line end
      assert.same({"a\n", "b\n"}, got)
    end)

    it("yields nothing for an empty file", function()
      local path = tmpname("e")
      assert(fs.write(path, ""))
      local n = 0
      for _ in fs.lines(path) do n = n + 1 end
      assert.equal(0, n)
    end)

    it("reads 100000 lines and lines longer than its chunk", function()
      local path = tmpname("many")
      local long = ("x"):rep(300000)
      local parts = {long}
      for i = 1, 100000 do parts[#parts + 1] = tostring(i) end
      assert(fs.write(path, table.concat(parts, "\n") .. "\n"))
      local n, sum, first = 0, 0, nil
      for line in fs.lines(path) do
        n = n + 1
        if n == 1 then first = line else sum = sum + tonumber(line) end
      end
      assert.equal(100001, n)
      assert.equal(long, first)
      assert.equal(100000 * 100001 // 2, sum)
    end)

    it("closes the file when the loop breaks", function()
      local path = tmpname("b")
      assert(fs.write(path, ("line\n"):rep(100000)))
      local before = fd_count()
      for line in fs.lines(path) do
        assert.equal(before + 1, fd_count())
        assert.equal("line", line)
        break
      end
      H.assert_clean()
      assert.equal(before, fd_count())
    end)

    it("closes the file of an iterator dropped before its first line", function()
      local path = tmpname("dropped")
      assert(fs.write(path, "a\nb\n"))
      local before = fd_count()
      local function open_and_drop() fs.lines(path) end
      open_and_drop()
      assert.equal(before + 1, fd_count())
      collectgarbage()
      collectgarbage()
      H.assert_clean()
      assert.equal(before, fd_count())
    end)

    it("returns nil at the end, then raises if called again", function()
      local path = tmpname("end")
      assert(fs.write(path, "x\n"))
      local it = fs.lines(path)
      assert.equal("x", it())
      assert.is_nil(it())
      assert.has_error(function() it() end, "file is already closed")
    end)

    it("raises io: for a file that cannot be opened, as io.lines does", function()
      local path = root .. "/missing-lines"
      local ok, err = pcall(fs.lines, path)
      assert.is_false(ok)
      assert.equal("io: " .. path .. ": no such file or directory", err)
    end)

    it("raises io: when a read fails", function()
      local ok, err = pcall(function()
        for _ in fs.lines(root) do end
      end)
      assert.is_false(ok)
      assert.equal("io: " .. root .. ": illegal operation on a directory", err)
    end)

    it("rejects an unknown format", function()
      assert.has_error(function() fs.lines(root, "n") end)
    end)
  end)

  describe("stat", function()
    it("describes a file", function()
      local path = tmpname("s")
      assert(fs.write(path, "12345"))
      os.execute("chmod 640 " .. H.shell_quote(path))
      local st = fs.stat(path)
      assert.equal(5, st.size)
      assert.equal("file", st.type)
      assert.equal(tonumber("640", 8), st.mode)
      assert.is_true(math.abs(st.mtime - os.time()) < 60)
      assert.equal(1, st.nlink)
    end)

    it("describes a directory, and follows links unless lstat is used", function()
      assert.equal("directory", fs.stat(root).type)
      local link = tmpname("link")
      assert.equal(0, exec({"ln", "-s", root, link}).code)
      assert.equal("directory", fs.stat(link).type)
      assert.equal("link", fs.lstat(link).type)
      assert.equal("char", fs.stat("/dev/null").type)
    end)

    it("returns io: for a missing path", function()
      local st, err, code = fs.stat(root .. "/nothing")
      assert.is_nil(st)
      assert.equal("io: " .. root .. "/nothing: no such file or directory", err)
      assert.equal("ENOENT", code)
    end)
  end)

  describe("list", function()
    it("returns the sorted names without . and ..", function()
      local dir = tmpname("dir")
      assert(fs.mkdir(dir))
      for _, n in ipairs({"b", "a", "C", "a.txt", ".hidden"}) do
        assert(fs.write(dir .. "/" .. n, n))
      end
      assert.same({".hidden", "C", "a", "a.txt", "b"}, fs.list(dir))
    end)

    it("returns an empty list for an empty directory", function()
      local dir = tmpname("emptydir")
      assert(fs.mkdir(dir))
      assert.same({}, fs.list(dir))
    end)

    it("returns io: for a missing directory or a file", function()
      local names, err, code = fs.list(root .. "/nope")
      assert.is_nil(names)
      assert.equal("io: " .. root .. "/nope: no such file or directory", err)
      local f = tmpname("f")
      assert(fs.write(f, ""))
      names, err, code = fs.list(f)
      assert.is_nil(names)
      assert.equal("ENOTDIR", code)
    end)
  end)

  describe("mkdir", function()
    it("makes a directory, and fails if it exists", function()
      local dir = tmpname("m")
      assert.is_true(fs.mkdir(dir))
      assert.equal("directory", fs.stat(dir).type)
      local ok, err, code = fs.mkdir(dir)
      assert.is_nil(ok)
      assert.equal("io: " .. dir .. ": file already exists", err)
      assert.equal("EEXIST", code)
    end)

    it("with parents makes the missing parents and accepts an existing one", function()
      local dir = tmpname("p") .. "/a/b/c"
      assert.is_true(fs.mkdir(dir, {parents = true}))
      assert.equal("directory", fs.stat(dir).type)
      assert.is_true(fs.mkdir(dir, {parents = true}))
    end)

    it("with parents fails where a file is in the way", function()
      local f = tmpname("blocker")
      assert(fs.write(f, ""))
      local ok, err, code = fs.mkdir(f .. "/sub/dir", {parents = true})
      assert.is_nil(ok)
      assert.equal("io: " .. f .. "/sub/dir: not a directory", err)
      assert.equal("ENOTDIR", code)
      ok, err = fs.mkdir(f, {parents = true})
      assert.is_nil(ok)
      assert.equal("io: " .. f .. ": file already exists", err)
    end)

    it("uses opts.mode", function()
      local dir = tmpname("mode")
      assert.is_true(fs.mkdir(dir, {mode = tonumber("700", 8)}))
      assert.equal(tonumber("700", 8), fs.stat(dir).mode)
    end)
  end)

  describe("remove", function()
    it("removes a file and an empty directory", function()
      local f, d = tmpname("rf"), tmpname("rd")
      assert(fs.write(f, "x"))
      assert(fs.mkdir(d))
      assert.is_true(fs.remove(f))
      assert.is_true(fs.remove(d))
      assert.is_false(fs.exists(f))
      assert.is_false(fs.exists(d))
    end)

    it("refuses a non-empty directory unless recursive", function()
      local d = tmpname("tree")
      assert(fs.mkdir(d .. "/a/b", {parents = true}))
      assert(fs.write(d .. "/a/b/f", "x"))
      assert(fs.write(d .. "/g", "y"))
      local ok, err, code = fs.remove(d)
      assert.is_nil(ok)
      assert.equal("io: " .. d .. ": directory not empty", err)
      assert.equal("ENOTEMPTY", code)
      assert.is_true(fs.remove(d, {recursive = true}))
      assert.is_false(fs.exists(d))
    end)

    it("removes a link, not what it points to, even recursively", function()
      local target = tmpname("target")
      assert(fs.mkdir(target))
      assert(fs.write(target .. "/keep", "x"))
      local d = tmpname("withlink")
      assert(fs.mkdir(d))
      assert.equal(0, exec({"ln", "-s", target, d .. "/link"}).code)
      assert.is_true(fs.remove(d, {recursive = true}))
      assert.equal("x", fs.read(target .. "/keep"))
    end)

    it("returns io: for a missing path", function()
      local ok, err, code = fs.remove(root .. "/gone", {recursive = true})
      assert.is_nil(ok)
      assert.equal("io: " .. root .. "/gone: no such file or directory", err)
      assert.equal("ENOENT", code)
    end)
  end)

  it("rename moves a file, and exists tells whether a path exists", function()
    local a, b = tmpname("from"), tmpname("to")
    assert(fs.write(a, "moved"))
    assert.is_true(fs.exists(a))
    assert.is_true(fs.rename(a, b))
    assert.is_false(fs.exists(a))
    assert.equal("moved", fs.read(b))
    local ok, err = fs.rename(a, b)
    assert.is_nil(ok)
    assert.equal("io: " .. a .. ": no such file or directory", err)
  end)

  describe("when cancelled", function()
    it("abandons a read stuck in the thread pool and cleans up when it ends", function()
      -- opening a FIFO blocks in the thread pool until a writer comes
      local fifo = tmpname("fifo")
      assert.equal(0, exec({"mkfifo", fifo}).code)
      local t = spawn(function() return fs.read(fifo) end)
      sleep(0.05)
      assert.equal(1, ah.stats().fs)
      t:cancel()
      local ok, err = pcall(t.wait, t)
      assert.is_false(ok)
      assert.matches("^cancelled", err)
      -- still in flight: the thread is blocked in open(); a writer ends it
      -- (it only opens: the abandoned read may close its end at once)
      assert.equal(1, ah.stats().fs)
      assert.equal(0, exec({"sh", "-c", 'exec 3>"$1"', "sh", fifo}).code)
      H.assert_clean()
    end)

    it("by timeout() returns timeout: and the file is closed", function()
      local fifo = tmpname("fifo2")
      assert.equal(0, exec({"mkfifo", fifo}).code)
      local writer = spawn(function()
        return exec({"sh", "-c", 'exec 3>"$1"; sleep 0.5', "sh", fifo})
      end)
      local res, err = timeout(0.2, function()
        local n = 0
        for _ in fs.lines(fifo) do n = n + 1 end
        return n
      end)
      assert.is_nil(res)
      assert.matches("^timeout", err)
      writer:wait()
    end)

    it("a cancelled write still writes the whole data or nothing torn", function()
      local path = tmpname("cw")
      local data = ("0123456789"):rep(1000000)
      local t = spawn(function() return fs.write(path, data) end)
      sleep(0)
      t:cancel()
      assert.is_false(pcall(t.wait, t))
      H.assert_clean()
      local got = fs.read(path)
      -- the write may have been stopped before it opened the file, or have
      -- finished; a started write is not interrupted
      assert.is_true(got == nil or got == "" or got == data, "torn write: " .. #(got or ""))
    end)
  end)

  describe("misuse", function()
    it("raises for bad paths and arguments", function()
      assert.has_error(function() fs.read() end)
      assert.has_error(function() fs.read("") end)
      assert.has_error(function() fs.read("a\0b") end)
      assert.has_error(function() fs.write(root .. "/x") end)
      assert.has_error(function() fs.mkdir(root .. "/x", "parents") end)
      assert.has_error(function() fs.remove(42 == 42 and {} or nil) end)
    end)

    it("raises where the task cannot suspend", function()
      local ok, err = pcall(table.sort, {1, 2, 3}, function(a, b)
        fs.read("/etc/hostname")
        return a < b
      end)
      assert.is_false(ok)
      assert.matches("fs.read", err)
    end)
  end)
end)
