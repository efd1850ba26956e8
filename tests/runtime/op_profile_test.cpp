// SD_PROFILE's table rows: a block's indices merge into '#', an op's own digits stay.
#include <gtest/gtest.h>

#include "runtime/op_profile.h"

namespace sd {
namespace {

TEST(OpProfile, RowNamesMergeIndicesOnly) {
  EXPECT_EQ(profile_row_name("unet.down_blocks.1.resnets.0"), "unet.down_blocks.#.resnets.#");
  EXPECT_EQ(profile_row_name("unet.up_blocks.12.attentions.3.transformer_blocks.0.attn2"),
            "unet.up_blocks.#.attentions.#.transformer_blocks.#.attn2");
  EXPECT_EQ(profile_row_name("conv2d"), "conv2d");
  EXPECT_EQ(profile_row_name("upsample_nearest2d"), "upsample_nearest2d");
  EXPECT_EQ(profile_row_name("0.layers.10"), "#.layers.#");
  EXPECT_EQ(profile_row_name("block2x.3d"), "block2x.3d");
  EXPECT_EQ(profile_row_name(""), "");
}

}  // namespace
}  // namespace sd
