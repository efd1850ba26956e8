// The one command-line parser of the tools (train/flags.h): argparse habits on the command line,
// TOML files with --config (the command line wins; kohya's [sections] flatten), errors that name the
// flag and the file, and the effective configuration that reads back as the same run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <optional>

#include "runtime/error.h"
#include "tests/test_util.h"
#include "train/flags.h"
#include "train/train_args.h"

namespace sd::train {
namespace {

namespace fs = std::filesystem;

// A small table of every kind of flag, bound to plain fields.
struct Fields {
  std::string name = "default name";
  int64_t steps = 10;
  double lr = 1e-4;
  bool ema = false;
  std::vector<std::string> prompts;
  std::string out;
};

void declare(FlagParser& p, Fields& f) {
  p.add({"name", "TEXT", "default name", "a text", "G",
         FlagBinding{[&f](const std::string& v) { f.name = v; }, [&f] { return toml_string(f.name); }}});
  p.add({"steps", "N", "10", "an integer >= 1", "G",
         FlagBinding{[&f](const std::string& v) {
                       const int64_t x = parse_int(v);
                       SD_CHECK(x >= 1, "must be at least 1");
                       f.steps = x;
                     },
                     [&f] { return toml_int(f.steps); }},
         {"num_steps"}});
  p.add({"learning_rate", "LR", "1e-4", "a number", "G",
         FlagBinding{[&f](const std::string& v) { f.lr = parse_double(v); }, [&f] { return toml_double(f.lr); }}});
  p.add({"use_ema", "", "", "a switch", "H",
         FlagBinding{[&f](const std::string&) { f.ema = true; }, [&f] { return toml_bool(f.ema); }}});
  p.add({"prompt", "TEXT", "", "repeatable", "H", [&f](const std::string& v) { f.prompts.push_back(v); }, {}, true});
  p.add({"output_dir", "DIR", "", "short -o", "H", [&f](const std::string& v) { f.out = v; }, {"o"}});
  p.add_ignored("use_8bit_adam", false, "not needed");
}

struct Parsed {
  Fields f;
  std::vector<std::string> given;
  std::string config;
};

std::optional<Parsed> parse(std::vector<std::string> args) {
  Parsed r;
  FlagParser p("prog", "summary");
  declare(p, r.f);
  std::vector<const char*> argv = {"prog"};
  for (const std::string& a : args) argv.push_back(a.c_str());
  if (!p.parse(int(argv.size()), argv.data())) return std::nullopt;
  r.given = p.given();
  r.config = p.effective_config("header line");
  return r;
}

class FlagFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("sd_flags_test_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string file(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    test::write_text(p, text);
    return p.string();
  }
  fs::path dir_;
};

TEST(Flags, ArgparseHabits) {
  const auto r = parse({"--name=x y", "--num-steps", "3", "--learning_rate", "-2e-3", "--use_ema", "--prompt", "a",
                        "--prompt=b", "-o", "out", "--steps=4", "--use_8bit_adam"});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->f.name, "x y");
  EXPECT_EQ(r->f.steps, 4);  // given twice: the last one wins
  EXPECT_DOUBLE_EQ(r->f.lr, -2e-3);  // a value that starts with '-' is still a value
  EXPECT_TRUE(r->f.ema);
  EXPECT_EQ(r->f.prompts, (std::vector<std::string>{"a", "b"}));
  EXPECT_EQ(r->f.out, "out");
  EXPECT_EQ(parse({"--name="})->f.name, "");  // an empty value
  EXPECT_FALSE(parse({"--use_ema=false"})->f.ema);
  EXPECT_TRUE(parse({"--use_ema=yes"})->f.ema);
  EXPECT_FALSE(parse({"--help"}).has_value());
}

TEST(Flags, ErrorsNameTheFlag) {
  EXPECT_NE(test::error_of([] { parse({"--stesp", "3"}); }).find("unknown flag --stesp (did you mean --steps?)"),
            std::string::npos);
  EXPECT_NE(test::error_of([] { parse({"--steps", "0"}); }).find("--steps 0: must be at least 1"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse({"--steps", "x"}); }).find("--steps x: expected an integer"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse({"--steps"}); }).find("--steps needs a value (N)"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse({"stray"}); }).find("unexpected argument 'stray'"), std::string::npos);
  EXPECT_NE(test::error_of([] { parse({"--use_ema=maybe"}); }).find("--use_ema=maybe: expected true or false"),
            std::string::npos);
}

TEST_F(FlagFiles, ConfigFileKeysAreFlagNamesAndTheCommandLineWins) {
  // kohya's files group keys under [sections]; lists feed repeatable flags; comments are allowed.
  const std::string cfg = file("run.toml", R"([model_arguments]
name = 'from "the" file'
steps = 7   # a comment
[training_arguments]
learning_rate = 3e-4
use_ema = true
prompt = [
  "a cat",   # lists may span lines
  'a dog, red #008080',
]
use_8bit_adam = true
)");
  auto r = parse({"--config", cfg});
  ASSERT_TRUE(r);
  EXPECT_EQ(r->f.name, "from \"the\" file");
  EXPECT_EQ(r->f.steps, 7);
  EXPECT_DOUBLE_EQ(r->f.lr, 3e-4);
  EXPECT_TRUE(r->f.ema);
  EXPECT_EQ(r->f.prompts, (std::vector<std::string>{"a cat", "a dog, red #008080"}));
  // The command line wins, also over a repeatable flag's list, wherever --config stands.
  r = parse({"--steps", "2", "--config=" + cfg, "--prompt", "only"});
  EXPECT_EQ(r->f.steps, 2);
  EXPECT_EQ(r->f.prompts, (std::vector<std::string>{"only"}));
  EXPECT_EQ(r->f.name, "from \"the\" file");
  // A switch set false in the file is not "given".
  r = parse({"--config", file("off.toml", "use_ema = false\n")});
  EXPECT_FALSE(r->f.ema);
  EXPECT_TRUE(r->given.empty());
}

TEST_F(FlagFiles, ConfigErrorsNameTheFileAndTheKey) {
  const std::string typo = file("typo.toml", "stesp = 3\n");
  std::string e = test::error_of([&] { parse({"--config", typo}); });
  EXPECT_NE(e.find("--config '" + typo + "': unknown key 'stesp' (did you mean steps?)"), std::string::npos) << e;
  const std::string bad = file("bad.toml", "steps = 0\n");
  e = test::error_of([&] { parse({"--config", bad}); });
  EXPECT_NE(e.find("--steps 0 (from " + bad + "): must be at least 1"), std::string::npos) << e;
  e = test::error_of([&] { parse({"--config", file("list.toml", "steps = [1, 2]\n")}); });
  EXPECT_NE(e.find("key 'steps' takes one value, not a list of 2"), std::string::npos) << e;
  e = test::error_of([&] { parse({"--config", file("sw.toml", "use_ema = 3\n")}); });
  EXPECT_NE(e.find("key 'use_ema' is a switch: true or false, not '3'"), std::string::npos) << e;
  e = test::error_of([&] { parse({"--config", (dir_ / "missing.toml").string()}); });
  EXPECT_NE(e.find("missing.toml': no such file"), std::string::npos) << e;
  e = test::error_of([&] { parse({"--config", file("deep.toml", "[a.b]\nsteps = 2\n")}); });
  EXPECT_NE(e.find("nested deeper than one [section]"), std::string::npos) << e;
  e = test::error_of([&] { parse({"--config", file("broken.toml", "steps = 2\nname = 'unterminated\n")}); });
  EXPECT_NE(e.find("broken.toml' line 2: "), std::string::npos) << e;
  EXPECT_NE(e.find("(not valid TOML)"), std::string::npos) << e;
}

TEST_F(FlagFiles, EffectiveConfigReadsBackAsTheSameRun) {
  // Text that TOML and CLI11 treat specially: both quotes, a backslash (A1111's \( escapes), '#', '='.
  const std::string tricky = "it's a \"quoted\" \\(cat\\) # not a comment = x";
  const auto first = parse({"--name", tricky, "--steps", "5", "--prompt", "a, b", "--prompt", "c'd", "--use_ema"});
  ASSERT_TRUE(first);
  EXPECT_NE(first->config.find("# header line\n"), std::string::npos);
  EXPECT_NE(first->config.find("\nsteps = 5\n"), std::string::npos) << first->config;
  EXPECT_NE(first->config.find("\n# learning_rate = 0.0001\n"), std::string::npos) << first->config;  // a default
  const std::string path = file("effective.toml", first->config);
  const auto again = parse({"--config", path});
  ASSERT_TRUE(again);
  EXPECT_EQ(again->f.name, tricky);
  EXPECT_EQ(again->f.steps, 5);
  EXPECT_EQ(again->f.prompts, first->f.prompts);
  EXPECT_TRUE(again->f.ema);
  EXPECT_DOUBLE_EQ(again->f.lr, first->f.lr);
  EXPECT_EQ(again->config, first->config);
}

TEST(Flags, TomlValues) {
  EXPECT_EQ(toml_double(1e-4), "0.0001");
  EXPECT_EQ(toml_double(5), "5.0");
  EXPECT_EQ(toml_double(0.1), "0.1");
  EXPECT_EQ(std::stod(toml_double(2.0 / 3.0)), 2.0 / 3.0);  // round-trips
  EXPECT_EQ(toml_string("plain"), "'plain'");
  EXPECT_EQ(toml_string("it's"), "\"it's\"");
  EXPECT_EQ(toml_string("it's \\(x\\)\n"), "\"it's \\\\(x\\\\)\\n\"");
  EXPECT_EQ(toml_array({"1", "2"}), "[1, 2]");
}

// sd_train's own table: the file it writes (FlagParser::effective_config) parses back to the same
// arguments, method-dependent defaults included, and without tripping the "belongs to another
// method" checks (those look only at flags given).
TEST_F(FlagFiles, SdTrainEffectiveConfigRepeatsTheRun) {
  auto parse_train = [](std::vector<std::string> args) {
    std::vector<const char*> argv = {"sd_train"};
    for (const std::string& a : args) argv.push_back(a.c_str());
    return parse_train_args(int(argv.size()), argv.data());
  };
  for (const char* method : {"lora", "dreambooth", "textual-inversion", "full"}) {
    std::vector<std::string> args = {"--method", method, "--pretrained_model_name_or_path", "m", "--seed", "42",
                                     "--validation_prompt", "a \"red\" cat's (hat:1.2)", "--learning_rate", "3e-4"};
    if (std::string(method) == "dreambooth") args.insert(args.end(), {"--instance_data_dir", "i", "--instance_prompt", "sks"});
    else args.insert(args.end(), {"--train_data_dir", "d"});
    if (std::string(method) == "textual-inversion")
      args.insert(args.end(), {"--placeholder_token", "<t>", "--initializer_token", "toy"});
    if (std::string(method) == "lora") args.insert(args.end(), {"--rank", "8", "--lora_target", "attn,ff"});
    const auto first = parse_train(args);
    ASSERT_TRUE(first) << method;
    const std::string path = file(std::string(method) + ".toml", first->effective_config);
    const auto again = parse_train({"--config", path});
    ASSERT_TRUE(again) << method;
    EXPECT_EQ(again->effective_config, first->effective_config) << method;
    EXPECT_EQ(again->output_dir, first->output_dir);
    EXPECT_EQ(again->train_batch_size, first->train_batch_size);
    EXPECT_EQ(again->max_train_steps, first->max_train_steps);
    EXPECT_EQ(again->validation_prompts, first->validation_prompts);
    EXPECT_EQ(again->image_interpolation_mode, first->image_interpolation_mode);
    EXPECT_EQ(again->lora_target, first->lora_target);
    EXPECT_EQ(again->seed, 42u);
    EXPECT_DOUBLE_EQ(again->learning_rate, 3e-4);
    EXPECT_DOUBLE_EQ(again->max_grad_norm, first->max_grad_norm);
  }
}

}  // namespace
}  // namespace sd::train
